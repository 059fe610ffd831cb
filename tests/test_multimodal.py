"""Mixed-task PaLI-3 batches (``pali3_edu.data.multimodal``): a pure function of (seed, step),
labels masked exactly on padding, the task mixture, OCR only where a word is written, prompts
that decode back to the example, and clear errors for texts that do not fit."""

from __future__ import annotations

import random

import pytest
import torch

from pali3_edu.data.multimodal import (
    DEFAULT_TASK_WEIGHTS,
    MultimodalData,
    all_examples,
    load_multimodal,
)
from pali3_edu.data.shapesworld import (
    ShapesWorldConfig,
    generate_scene,
    scene_record,
    split_seeds,
)
from pali3_edu.data.tasks import TASKS, make_example
from pali3_edu.tokenizer import course_tokenizer
from pali3_edu.tokens import IGNORE_INDEX

torch.set_num_threads(1)
N = 80


@pytest.fixture(scope="module")
def tok():
    return course_tokenizer()


@pytest.fixture(scope="module")
def records():
    cfg = ShapesWorldConfig(word_prob=0.5)
    return [scene_record(generate_scene(s, cfg, "train"), with_image=False) for s in split_seeds("train", N)]


@pytest.fixture(scope="module")
def images():
    # The content of the pixels does not matter here; each image is filled with its own index so
    # that a batch row can be traced back to its scene.
    return torch.arange(N, dtype=torch.uint8)[:, None, None, None].expand(N, 3, 8, 8).contiguous()


def make(tok, images, records, weights=DEFAULT_TASK_WEIGHTS, batch_size=16, seed=0, **kw):
    kw.setdefault("max_prompt_len", 24)
    kw.setdefault("max_answer_len", 24)
    return MultimodalData(images, records, tok, weights, batch_size, seed=seed, **kw)


def test_batch_shapes_and_pixels(tok, images, records):
    data = make(tok, images, records)
    batch = data.get_batch(0)
    assert set(batch) == {"pixel_values", "input_ids", "attention_mask", "labels", "task"}
    assert batch["pixel_values"].shape == (16, 3, 8, 8) and batch["pixel_values"].dtype == torch.float32
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["labels"].shape[0] == 16 and batch["task"].dtype == torch.long
    examples = data.examples(0)
    scenes = [e["scene"] for e in examples]
    assert len(set(scenes)) == 16  # different scenes in one batch
    want = torch.tensor(scenes, dtype=torch.float32) / 127.5 - 1.0
    torch.testing.assert_close(batch["pixel_values"][:, 0, 0, 0], want)
    assert [TASKS[i] for i in batch["task"].tolist()] == [e["task"] for e in examples]


def test_batches_are_a_pure_function_of_seed_and_step(tok, images, records):
    a, resumed = make(tok, images, records), make(tok, images, records)
    for step in (0, 3, 1000):
        first, again = a.get_batch(step), resumed.get_batch(step)
        for key in first:
            assert torch.equal(first[key], again[key]), (step, key)
        assert a.examples(step) == resumed.examples(step)
    assert a.examples(0) != a.examples(1)
    assert a.examples(0) != make(tok, images, records, seed=1).examples(0)
    a.get_batch(5)  # asking for other steps in between changes nothing
    assert a.examples(3) == resumed.examples(3)


def test_labels_are_ignored_exactly_on_padding(tok, images, records):
    data = make(tok, images, records)
    for step in range(4):
        batch, examples = data.get_batch(step), data.examples(step)
        labels = batch["labels"]
        for row, ex in zip(labels, examples):
            ids = tok.encode(ex["suffix"])  # answer + EOS
            assert row[: len(ids)].tolist() == ids
            assert (row[len(ids):] == IGNORE_INDEX).all()
        # padding to the longest answer of the batch: at least one row has no padding at all
        assert (labels != IGNORE_INDEX).all(dim=1).any()


def test_prompts_decode_to_the_example_prefix(tok, images, records):
    data = make(tok, images, records)
    for step in range(3):
        batch, examples = data.get_batch(step), data.examples(step)
        lengths = batch["attention_mask"].sum(1)
        assert batch["input_ids"].shape[1] == int(lengths.max())  # padded to the longest prompt
        for ids, mask, ex in zip(batch["input_ids"], batch["attention_mask"], examples):
            assert tok.decode(ids[mask == 1], skip_special_tokens=True) == ex["prefix"]
            assert (ids[mask == 0] == tok.pad_id).all()
            assert ids[mask == 1][-1] == tok.eos_id


def test_examples_are_make_example_outputs(tok, images, records):
    data = make(tok, images, records)
    for ex in data.examples(2):
        assert {k: ex[k] for k in ("prefix", "suffix", "task")} in all_examples(records[ex["scene"]], ex["task"])


@pytest.mark.parametrize("weights", [DEFAULT_TASK_WEIGHTS, {"caption": 3.0, "vqa": 1.0, "detect": 0.0}])
def test_tasks_appear_in_proportion_to_their_weights(tok, images, records, weights):
    data = make(tok, images, records, weights)
    steps = 60
    counts = data.task_counts(steps)
    total = steps * 16
    expected = data.task_fractions()
    assert abs(sum(expected.values()) - 1.0) < 1e-9
    for task in TASKS:
        if weights.get(task, 0.0) == 0.0:
            assert counts[task] == 0 and expected[task] == 0.0
        else:
            assert counts[task] > 0
            assert abs(counts[task] / total - expected[task]) < 0.05, (task, counts, expected)
    if weights.get("caption") == 3.0:  # every record supports both tasks: exactly 3 : 1
        assert expected["caption"] == pytest.approx(0.75)


def test_task_fractions_account_for_unsupported_tasks(tok, images, records):
    data = make(tok, images, records, {"caption": 1.0, "ocr": 1.0})
    with_word = sum(bool(r["word"]) for r in records) / len(records)
    assert 0 < with_word < 1
    # scenes with a word: half OCR; scenes without: all caption
    assert data.task_fractions()["ocr"] == pytest.approx(with_word / 2)


def test_scenes_without_a_word_never_get_ocr(tok, images, records):
    data = make(tok, images, records)
    seen_ocr = 0
    for step in range(40):
        for ex in data.examples(step):
            if ex["task"] == "ocr":
                seen_ocr += 1
                assert records[ex["scene"]]["word"], ex
    assert seen_ocr > 0
    only_ocr = make(tok, images, records, {"ocr": 1.0}, batch_size=4)
    assert set(only_ocr.pool.tolist()) == {i for i, r in enumerate(records) if r["word"]}
    assert all(ex["task"] == "ocr" for s in range(10) for ex in only_ocr.examples(s))


def test_too_long_answers_are_an_error_naming_the_example(tok, images, records):
    with pytest.raises(ValueError, match=r"Record \d+: the detect answer .* max_answer_len=8. Raise max_answer_len"):
        make(tok, images, records, {"detect": 1.0}, max_answer_len=8)
    with pytest.raises(ValueError, match="max_prompt_len=4"):
        make(tok, images, records, {"vqa": 1.0}, max_prompt_len=4)
    # without the up-front scan the batch itself refuses (no silent truncation)
    lazy = make(tok, images, records, {"detect": 1.0}, max_answer_len=8, check_lengths=False)
    with pytest.raises(ValueError, match=r"Step 0, row \d+ \(record \d+\): the detect answer"):
        lazy.get_batch(0)


def test_check_lengths_reports_the_longest_texts(tok, images, records):
    data = make(tok, images, records)
    longest = data.check_lengths()
    prompts = [tok.encode(e["prefix"]) for r in records for t in TASKS
               for e in _all_or_none(r, t)]
    assert longest["prompt"] == max(len(p) for p in prompts)
    assert longest["answer"] <= 24


def _all_or_none(record, task):
    try:
        return all_examples(record, task)
    except ValueError:
        return []


def test_all_examples_enumerates_every_choice(records):
    rec = next(r for r in records if len(r["qa"]) > 3)
    got = {e["prefix"] for e in all_examples(rec, "vqa")}
    assert got == {f"answer en {q['question']}" for q in rec["qa"]}
    rng_examples = {make_example(rec, "vqa", random.Random(s))["prefix"] for s in range(200)}
    assert rng_examples <= got


@pytest.mark.parametrize("weights, match", [
    ({"captions": 1.0}, "Unknown task"),
    ({"caption": 0.0, "vqa": 0.0}, "Every task weight is 0"),
    ({"caption": -1.0}, "finite numbers >= 0"),
    ({}, "non-empty"),
])
def test_bad_task_weights(tok, images, records, weights, match):
    with pytest.raises(ValueError, match=match):
        make(tok, images, records, weights)


def test_bad_inputs(tok, images, records):
    with pytest.raises(ValueError, match="batch_size must be an int in 1..80"):
        make(tok, images, records, batch_size=81)
    with pytest.raises(ValueError, match="uint8"):
        make(tok, images.float(), records)
    with pytest.raises(ValueError, match="one record per image"):
        make(tok, images, records[:-1])
    with pytest.raises(ValueError, match="must not hold the image"):
        make(tok, images, [{**r, "image": None} for r in records])
    with pytest.raises(ValueError, match="step must be an int >= 0"):
        make(tok, images, records).get_batch(-1)


def test_load_multimodal_and_a_training_step(tok):
    from pali3_edu.data.shapesworld import load_shapesworld
    from pali3_edu.pali3 import PaLI3, PaLI3Config
    from pali3_edu.recipes.siglip import images_to_uint8

    data = load_multimodal(tok, "train", 24, image_size=64, task_weights=DEFAULT_TASK_WEIGHTS, batch_size=4,
                           max_prompt_len=24, max_answer_len=24, word_prob=0.5)
    ds = load_shapesworld("train", 24, image_size=64, word_prob=0.5)
    assert torch.equal(data.images, images_to_uint8(ds["image"], 64))
    assert data.records[5]["caption"] == ds[5]["caption"] and "image" not in data.records[5]
    torch.manual_seed(0)
    model = PaLI3(PaLI3Config())
    batch = data.get_batch(0)
    out = model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], labels=batch["labels"])
    assert out.logits.shape[:2] == batch["labels"].shape and torch.isfinite(out.loss)
