"""Hub data sets streamed (``pali3_edu.data.hub``), tested offline.

A module fixture writes tiny copies of the four sources in the hub's own format: parquet files
written by ``datasets`` (images embedded), laid out as on the hub (``data/<split>-0000k-of-0000n``),
two files per split so that a data set is read across files. They are loaded through the same
``load_hub`` as the hub names (``path=`` / ``data_files=``, i.e. ``load_dataset("parquet", ...)``),
streamed and in memory, and the two mappings must agree row by row.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset, Features, Image, List, Value
from PIL import Image as PILImage

from pali3_edu.data import hub
from pali3_edu.data.streaming import StreamLoader
from pali3_edu.data.tasks import TASKS, parse_detection
from pali3_edu.tokenizer import course_tokenizer
from pali3_edu.tokens import IGNORE_INDEX


def _img(w: int, h: int, seed: int) -> PILImage.Image:
    rng = np.random.default_rng(seed)
    return PILImage.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _coco_rows() -> tuple[Features, list[dict]]:
    sent = {"tokens": List(Value("string")), "raw": Value("string"), "imgid": Value("int64"),
            "sentid": Value("int64")}
    feats = Features({"image": Image(), "filepath": Value("string"), "sentids": List(Value("int64")),
                      "filename": Value("string"), "imgid": Value("int64"), "split": Value("string"),
                      "sentences": sent, "cocoid": Value("int64")})
    rows = []
    for k in range(9):  # 1, 2 or 3 caption rows per image, one row after the other as on the hub
        cocoid = 1000 + k
        for j in range(1 + k % 3):
            text = f"a photo of thing {k} number {j}"
            rows.append({"image": _img(20 + k, 16, k), "filepath": "val2014", "sentids": [j],
                         "filename": f"COCO_{cocoid}.jpg", "imgid": k, "split": "train",
                         "sentences": {"tokens": text.split(), "raw": text + " ", "imgid": k, "sentid": j},
                         "cocoid": cocoid})
    return feats, rows


def _vqav2_rows() -> tuple[Features, list[dict]]:
    ans = {"answer": Value("string"), "answer_confidence": Value("string"), "answer_id": Value("int64")}
    feats = Features({"question_type": Value("string"), "multiple_choice_answer": Value("string"),
                      "answers": List(ans), "image_id": Value("int64"), "answer_type": Value("string"),
                      "question_id": Value("int64"), "question": Value("string"), "image": Image()})
    rows = []
    for k in range(12):
        answers = [str(k % 4)] * 7 + ["many"] * 3
        rows.append({"question_type": "how many", "multiple_choice_answer": answers[0],
                     "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                                 for i, a in enumerate(answers)],
                     "image_id": k, "answer_type": "number", "question_id": 5000 + k,
                     "question": f"how many things are there {k}?", "image": _img(12 + k, 10, 100 + k)})
    return feats, rows


def _textvqa_rows() -> tuple[Features, list[dict]]:
    feats = Features({"image_id": Value("string"), "question_id": Value("int32"), "question": Value("string"),
                      "question_tokens": List(Value("string")), "image": Image(), "image_width": Value("int32"),
                      "image_height": Value("int32"), "flickr_original_url": Value("string"),
                      "flickr_300k_url": Value("string"), "answers": List(Value("string")),
                      "image_classes": List(Value("string")), "set_name": Value("string"),
                      "ocr_tokens": List(Value("string"))})
    rows = []
    for k in range(10):
        word = ["cat", "dog", "sun", "moon", "tree"][k % 5]
        rows.append({"image_id": f"img{k}", "question_id": k, "question": "what word is written?",
                     "question_tokens": ["what", "word"], "image": _img(16, 12 + k, 200 + k), "image_width": 16,
                     "image_height": 12 + k, "flickr_original_url": "", "flickr_300k_url": "",
                     "answers": [word] * 6 + ["x"] * 4, "image_classes": ["sign"], "set_name": "train",
                     "ocr_tokens": [word]})
    return feats, rows


def _refcoco_rows() -> tuple[Features, list[dict]]:
    feats = Features({"question_id": Value("string"), "image": Image(), "question": Value("string"),
                      "answer": List(Value("string")), "segmentation": List(Value("float32")),
                      "bbox": List(Value("float32")), "iscrowd": Value("int8"), "file_name": Value("string")})
    rows = []
    for k in range(10):
        rows.append({"question_id": f"r{k}", "image": _img(40 + 4 * k, 30, 300 + k),
                     "question": "Please carefully observe the area circled in the image and come up with a caption.",
                     "answer": [["red circle", "blue square", "green star"][k % 3], "the thing"],
                     "segmentation": [0.0] * 6, "bbox": [2.0 + k, 3.0, 10.0, 12.0], "iscrowd": 0,
                     "file_name": f"COCO_{k}.jpg"})
    return feats, rows


SOURCES = {"coco_captions": (_coco_rows, "train"), "vqav2": (_vqav2_rows, "validation"),
           "textvqa": (_textvqa_rows, "train"), "refcoco": (_refcoco_rows, "val")}


@pytest.fixture(scope="module")
def local_hub(tmp_path_factory):
    """``{name: folder}``: each source as two parquet files in the hub's layout."""
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    root = tmp_path_factory.mktemp("hub")
    folders = {}
    try:
        for name, (rows_fn, split) in SOURCES.items():
            feats, rows = rows_fn()
            ds = Dataset.from_list(rows, features=feats)
            cut = len(ds) // 2 + 1  # COCO: an image's rows go on across the two files
            folder = root / name
            (folder / "data").mkdir(parents=True)
            for k, part in enumerate((range(cut), range(cut, len(ds)))):
                ds.select(part).to_parquet(str(folder / "data" / f"{split}-{k:05d}-of-00002.parquet"))
            folders[name] = folder
        yield folders
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


@pytest.fixture(autouse=True)
def no_sleep_after_shuffled_reads(monkeypatch):
    """``datasets`` reads shuffled parquet shards in threads and sleeps 5 s whenever such a read ends
    early or at the end of an epoch (a workaround for an Arrow issue): harmless once per epoch in
    training, but these tests start dozens of reads. (Forked DataLoader workers inherit it.)"""
    import datasets

    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)


@pytest.fixture(scope="module")
def tok():
    return course_tokenizer()


def _same_row(streamed: dict, in_memory: dict) -> None:
    assert streamed.keys() == in_memory.keys()
    for key in streamed:
        if key == "image":
            assert np.array_equal(np.asarray(streamed[key]), np.asarray(in_memory[key]))
        else:
            assert streamed[key] == in_memory[key], key


# ---------------------------------------------------------------------------------------------
# load_hub(..., streaming=True): the same records as the in-memory mapping
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SOURCES))
def test_streamed_mapping_equals_the_in_memory_mapping(local_hub, tmp_path, name):
    from datasets import IterableDataset

    split = SOURCES[name][1]
    streamed = hub.load_hub(name, split, path=local_hub[name], streaming=True)
    in_memory = hub.load_hub(name, split, path=local_hub[name], cache_dir=str(tmp_path))
    assert isinstance(streamed, IterableDataset) and isinstance(in_memory, Dataset)
    assert streamed.features == in_memory.features == hub.hub_features()
    rows = list(streamed)
    assert len(rows) == len(in_memory) > 0
    for i, row in enumerate(rows):
        _same_row(row, in_memory[i])


def test_coco_rows_of_one_image_are_grouped_while_streaming(local_hub):
    rows = list(hub.load_hub("coco_captions", "train", path=local_hub["coco_captions"], streaming=True))
    assert [r["id"] for r in rows] == [str(1000 + k) for k in range(9)]
    assert [len(r["captions"]) for r in rows] == [1 + k % 3 for k in range(9)]
    # image 1002's three rows are split over the two files (rows 3-5, the first file holds 0-9)... and
    # image 1005's too: whichever file a row is in, one image gives one record
    assert rows[2]["captions"] == [f"a photo of thing 2 number {j}" for j in range(3)]
    assert rows[2]["caption"] == rows[2]["captions"][0] and rows[2]["image"].size == (22, 16)


def test_coco_rows_of_one_image_that_do_not_follow_each_other():
    from datasets import IterableDataset

    feats = Features({"image": Image(), "cocoid": Value("int64"), "caption": Value("string")})
    rows = [{"image": _img(4, 4, i), "cocoid": c, "caption": t}
            for i, (c, t) in enumerate([(1, "one"), (1, "uno"), (2, "two"), (1, "eins")])]
    in_memory = hub.map_coco_captions(Dataset.from_list(rows, features=feats))
    streamed = list(hub.map_coco_captions(Dataset.from_list(rows, features=feats).to_iterable_dataset()))
    assert [r["captions"] for r in in_memory] == [["one", "uno", "eins"], ["two"]]  # grouped wherever they are
    assert [r["captions"] for r in streamed] == [["one", "uno"], ["two"], ["eins"]]  # consecutive rows only
    assert isinstance(hub.map_coco_captions(Dataset.from_list(rows, features=feats).to_iterable_dataset()),
                      IterableDataset)


def test_data_files_and_num_examples(local_hub, tmp_path):
    files = sorted(str(p) for p in (local_hub["vqav2"] / "data").glob("*.parquet"))
    streamed = list(hub.load_hub("vqav2", "validation", num_examples=5, data_files=files, streaming=True))
    in_memory = hub.load_hub("vqav2", "validation", num_examples=5, data_files={"validation": files},
                             cache_dir=str(tmp_path))
    assert len(streamed) == len(in_memory) == 5
    for a, b in zip(streamed, in_memory):
        _same_row(a, b)
    assert [r["id"] for r in streamed] == [str(5000 + k) for k in range(5)]


def test_load_hub_errors(local_hub, tmp_path):
    with pytest.raises(ValueError, match="either path .* or data_files"):
        hub.load_hub("vqav2", "validation", path=local_hub["vqav2"], data_files=["x.parquet"])
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        hub.load_hub("vqav2", "validation", path=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"No parquet file of split 'testdev'.*found: data/validation-0000"):
        hub.load_hub("vqav2", "testdev", path=local_hub["vqav2"])
    with pytest.raises(ValueError, match="cannot be sliced; use num_examples"):
        hub.load_hub("vqav2", "validation[:3]", path=local_hub["vqav2"], streaming=True)
    with pytest.raises(ValueError, match="does not know its columns"):
        from datasets import IterableDataset

        hub.map_vqav2(IterableDataset.from_generator(lambda: iter([{"image": None, "question": "q"}])))


# ---------------------------------------------------------------------------------------------
# HubStream: training batches
# ---------------------------------------------------------------------------------------------


def _stream(local_hub, tok, name="vqav2", **kw):
    kw = {"batch_size": 3, "max_prompt_len": 24, "max_answer_len": 24, "image_size": 32, **kw}
    records = hub.load_hub(name, SOURCES[name][1], path=local_hub[name], streaming=True)
    return hub.HubStream(records, tok, kw.pop("task", hub.HUB_TASKS[name]), **kw)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", list(SOURCES))
def test_hub_batches_hold_the_rows_examples(local_hub, tok, name):
    stream = _stream(local_hub, tok, name, batch_size=2)
    batch = stream.batch(0)
    assert batch["pixel_values"].shape == (2, 3, 32, 32) and batch["pixel_values"].dtype == torch.float32
    assert batch["pixel_values"].min() >= -1 and batch["pixel_values"].max() <= 1
    assert set(batch["task"].tolist()) == {TASKS.index(hub.HUB_TASKS[name])}
    answers = [tok.decode(row[row != IGNORE_INDEX].tolist()[:-1]) for row in batch["labels"]]
    first = list(hub.load_hub(name, SOURCES[name][1], path=local_hub[name], streaming=True).take(2))
    expected = {"coco_captions": lambda r: r["caption"], "vqav2": lambda r: r["qa"][0]["answer"],
                "textvqa": lambda r: r["qa"][0]["answer"], "refcoco": lambda r: r["objects"][0]["label"]}[name]
    assert sorted(a.split(">")[-1].strip() for a in answers) == sorted(expected(r) for r in first)


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_hub_batches_are_the_same_whatever_the_number_of_workers(local_hub, tok, workers):
    stream = _stream(local_hub, tok, shuffle_buffer=4, seed=3)
    expected = [stream.batch(step) for step in range(6)]  # 12 rows: steps 4 and 5 are the second epoch
    with StreamLoader(stream, workers) as loader:
        got = [loader.get_batch(step) for step in range(6)]
        assert loader.discarded == 0
    assert all(_same(g, e) for g, e in zip(got, expected))
    assert not _same(expected[0], _stream(local_hub, tok, shuffle_buffer=4, seed=4).batch(0))


def test_hub_resume_at_step_k_equals_uninterrupted(local_hub, tok):
    with StreamLoader(_stream(local_hub, tok, shuffle_buffer=5), 0) as loader:
        uninterrupted = [loader.get_batch(step) for step in range(8)]
    with StreamLoader(_stream(local_hub, tok, shuffle_buffer=5), 2) as resumed:
        assert all(_same(resumed.get_batch(step), uninterrupted[step]) for step in range(5, 8))
    # no shuffling: the files' rows in order, then again (12 rows: 4 batches of 3 per epoch)
    plain = _stream(local_hub, tok)
    prompts = [sorted(tok.decode(row[row != 0].tolist()[:-1]) for row in plain.batch(step)["input_ids"])
               for step in (0, 1, 2, 3, 4, 8, 12)]
    assert prompts[0] == sorted(f"answer en how many things are there {k}?" for k in range(3))
    assert len({p for ps in prompts[:4] for p in ps}) == 12
    assert prompts[4] == prompts[5] == prompts[6] == prompts[0]  # epochs 1, 2, 3 start where epoch 0 did


def test_rows_that_do_not_fit_or_have_no_answer_are_skipped(tok):
    long = "the object that is described here with a very long referring expression indeed"
    feats = Features({"question_id": Value("string"), "image": Image(), "bbox": List(Value("float32")),
                      "answer": List(Value("string"))})
    rows = [{"question_id": f"r{k}", "image": _img(8, 8, k), "bbox": [1.0, 1.0, 4.0, 4.0],
             "answer": ["cat"] if k % 2 == 0 else [long]} for k in range(8)]
    records = hub.map_refcoco(Dataset.from_list(rows, features=feats))  # in memory: streamed by HubStream
    stream = hub.HubStream(records, tok, "refer", 4, 24, 12, 8)
    batch, pixels = stream.batch(0), [torch.from_numpy(np.array(rows[k]["image"])) for k in (0, 2, 4, 6)]
    assert all(tok.decode(row[row != IGNORE_INDEX].tolist()[:-1]).endswith("> cat") for row in batch["labels"])
    got = sorted((((batch["pixel_values"] + 1) * 127.5).round().byte().permute(0, 2, 3, 1)).tolist())
    assert got == sorted(p.tolist() for p in pixels)  # the images of rows 0, 2, 4, 6
    with pytest.raises(ValueError, match="No row of this data set can make a 'refer' example that fits"):
        hub.HubStream(records, tok, "refer", 4, 24, 5, 8).batch(0)  # 4 <loc> + "cat" + EOS = 6 tokens

    questions = [{"image": _img(4, 4, k), "question": f"q{k}?", "answers": ["yes"] if k % 3 else None}
                 for k in range(9)]
    vqa = hub.HubStream(hub.map_vqav2(Dataset.from_list(questions)), tok, "vqa", 3, 24, 24, 8)
    prompts = sorted(tok.decode(row[row != 0].tolist()[:-1]) for row in vqa.batch(0)["input_ids"])
    assert prompts == ["answer en q1?", "answer en q2?", "answer en q4?"]  # q0 and q3 have no answer


def test_a_task_no_row_supports(local_hub, tok):
    with pytest.raises(ValueError, match="No row of this data set can make a 'caption' example"):
        _stream(local_hub, tok, "vqav2", task="caption").batch(0)
    with pytest.raises(ValueError, match="No row of this data set can make a 'vqa' example that fits"):
        _stream(local_hub, tok, "vqav2", max_prompt_len=4).batch(0)


def test_hub_stream_bad_arguments(local_hub, tok):
    records = hub.load_hub("vqav2", "validation", path=local_hub["vqav2"], streaming=True)
    args = (tok, "vqa", 2, 24, 24, 32)
    with pytest.raises(TypeError, match="records must be a data set in the course schema"):
        hub.HubStream([{"image": None}], *args)
    with pytest.raises(ValueError, match="lack the course column"):
        from datasets import load_dataset

        files = sorted(str(p) for p in (local_hub["vqav2"] / "data").glob("*.parquet"))
        hub.HubStream(load_dataset("parquet", data_files=files, split="train", streaming=True), *args)
    with pytest.raises(ValueError, match="Unknown task 'answer'"):
        hub.HubStream(records, tok, "answer", 2, 24, 24, 32)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        hub.HubStream(records, tok, "vqa", 0, 24, 24, 32)
    with pytest.raises(ValueError, match="shuffle_buffer must be an int >= 0"):
        hub.HubStream(records, *args, shuffle_buffer=-1)
    with pytest.raises(ValueError, match="Unknown hub data set 'imagenet'"):
        hub.hub_batches("imagenet", tok, batch_size=2, max_prompt_len=24, max_answer_len=24, image_size=32)


# ---------------------------------------------------------------------------------------------
# the transfer stage on a hub data set
# ---------------------------------------------------------------------------------------------


def test_transfer_recipe_on_a_local_copy_of_refcoco(local_hub, tok):
    from pali3_edu.data.tasks import encode_box
    from pali3_edu.recipes import get_recipe
    from pali3_edu.recipes.pali3 import build_data, quantize_box
    from pali3_edu.recipes.scale import hub_transfer_recipe

    recipe = hub_transfer_recipe("colab-t4", "refcoco", path=str(local_hub["refcoco"]),
                                 **{"data.mix.batch_size": 2})
    assert recipe.data.stream.source == "refcoco" and recipe.data.stream.hub_path == str(local_hub["refcoco"])
    assert recipe.fingerprint() != get_recipe("pali3-transfer", "colab-t4", **{"data.mix.batch_size": 2}).fingerprint()
    loader = build_data(recipe, tok)
    assert isinstance(loader.stream, hub.HubStream) and loader.stream.task == "refer"
    loader.stream.shuffle_buffer = 0  # the files' order, to compare with the rows
    batch = loader.get_batch(0)
    assert batch["pixel_values"].shape == (2, 3, 448, 448) and set(batch["task"].tolist()) == {TASKS.index("refer")}
    # boxes quantised to the recipe's loc_levels, as for ShapesWorld
    first = list(hub.load_hub("refcoco", "val", path=local_hub["refcoco"], streaming=True).take(2))
    levels = recipe.data.mix.loc_levels
    want = sorted(encode_box(quantize_box(r["objects"][0]["box"], levels)) for r in first)
    got = sorted(tok.decode(row[row != IGNORE_INDEX].tolist()[:-1])[:36] for row in batch["labels"])  # 4 <locNNNN>
    assert got == want
    assert all(parse_detection(tok.decode(row[row != IGNORE_INDEX].tolist()[:-1])).ok for row in batch["labels"])
    loader.close()
    with pytest.raises(ValueError, match="Unknown hub data set 'coco'"):
        hub_transfer_recipe("h100", "coco")
    with pytest.raises(ValueError, match="does not stream its data; use a GPU preset"):
        hub_transfer_recipe("smoke", "refcoco")


@pytest.mark.parametrize("name", ["coco_captions", "refcoco"])
def test_hub_streams_survive_pickling(local_hub, tok, name):
    import pickle

    stream = _stream(local_hub, tok, name, shuffle_buffer=3, batch_size=2)
    assert _same(pickle.loads(pickle.dumps(stream)).batch(2), stream.batch(2))
