"""Real data sets from the Hugging Face hub, mapped into the ShapesWorld record schema.

On a machine with internet access ``load_hub("coco_captions")`` (or ``"vqav2"``, ``"textvqa"``,
``"refcoco"``) downloads a public data set with ``datasets.load_dataset`` and converts it so the
rest of the course (``tasks.make_example``, collate, metrics) treats it like ShapesWorld:

    image     Image
    id        string                           (the source's image or question id)
    caption   string, captions list[string]    ("" / [] when the source has none)
    qa        list of {question, answer, kind, answers: list[string]}   (answers = all human answers)
    objects   list of {label, box = [y0, x0, y1, x1] normalised to [0, 1]}
    word      string, word_box [4 floats]      (always "" / -1 here)
    source    string                           (the hub repository)

The ``map_*`` functions take an already loaded ``datasets.Dataset`` with the source's public
columns, so they work on a local copy (and the tests build tiny ones). Images are passed through
without decoding. They take a streamed ``datasets.IterableDataset`` as well and then map it row by
row while it is read (``load_hub(..., streaming=True)``): nothing is downloaded or converted
ahead. ``load_hub(..., path=folder)`` or ``data_files=...`` reads a local copy in the hub's
layout (parquet files) through the same code.

For training, :class:`HubStream` turns a mapped data set into PaLI-3 batches of one task
(``caption`` on COCO, ``vqa`` on VQAv2 and TextVQA, ``refer`` on RefCOCO) with the same
``get_batch(step)`` as the ShapesWorld batches (:func:`hub_batches` wraps it in a
:class:`~pali3_edu.data.streaming.StreamLoader`)::

    data = hub_batches("refcoco", tok, split="val", batch_size=32, max_prompt_len=24,
                       max_answer_len=40, image_size=448)      # streamed: needs internet
    batch = data.get_batch(0)    # pixel_values (32, 3, 448, 448), input_ids, labels, ...

Sources and the columns used:
- ``HuggingFaceM4/COCO`` (2014, Karpathy splits): one row per caption; ``image``, ``cocoid``,
  ``sentences = {raw, tokens, imgid, sentid}``. Rows of the same image are grouped.
- ``lmms-lab/VQAv2``: ``image``, ``question_id``, ``question``, ``multiple_choice_answer``,
  ``answers = [{answer, answer_confidence, answer_id}]``, ``answer_type`` (no answers in test).
- ``lmms-lab/textvqa``: ``image``, ``question_id``, ``question``, ``answers`` (10 strings).
- ``lmms-lab/RefCOCO``: ``image``, ``question_id``, ``answer`` (referring expressions),
  ``bbox = [x, y, w, h]`` in pixels (COCO convention).
"""

from __future__ import annotations

import functools
import io
import itertools
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor
from torch.utils.data import get_worker_info

from pali3_edu.data.streaming import RecordFn, StepStream, StreamLoader, step_mixture


def hub_features(decode: bool = True):
    """``datasets.Features`` of a mapped hub data set (see the module docstring)."""
    from datasets import Features, List, Value
    from datasets import Image as ImageFeature

    string = Value("string")
    return Features({
        "image": ImageFeature(decode=decode),
        "id": string,
        "caption": string,
        "captions": List(string),
        "qa": List({"question": string, "answer": string, "kind": string, "answers": List(string)}),
        "objects": List({"label": string, "box": List(Value("float32"), length=4)}),
        "word": string,
        "word_box": List(Value("float32"), length=4),
        "source": string,
    })


def _empty(source: str, id_: Any) -> dict[str, Any]:
    return {"id": str(id_), "caption": "", "captions": [], "qa": [], "objects": [], "word": "",
            "word_box": [-1.0, -1.0, -1.0, -1.0], "source": source}


def _require(ds, columns: list[str], source: str) -> None:
    """Check that ``ds`` is one split of a data set (in memory or streamed) with the source's
    columns; say what to do if not."""
    from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict

    if isinstance(ds, (DatasetDict, IterableDatasetDict)):
        raise TypeError(
            f"Got a DatasetDict with splits {list(ds)}; pass one split, e.g. ds[{next(iter(ds), 'validation')!r}]."
        )
    if not isinstance(ds, (Dataset, IterableDataset)):
        raise TypeError(
            f"Expected a datasets.Dataset (or a streamed IterableDataset) with the columns of {source}, got "
            f"{type(ds).__name__}. Load one with datasets.load_dataset(..., split=...), or Dataset.from_list(rows)."
        )
    if ds.column_names is None:
        raise ValueError(
            f"This streamed data set does not know its columns (features), so it cannot be mapped as {source}. "
            "Give them when you build it (e.g. IterableDataset.from_generator(..., features=...)).")
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise ValueError(
            f"This does not look like {source}: missing column(s) {missing}; it has {ds.column_names}."
        )


def _convert(ds, row_fn: Callable[[dict[str, Any], int], dict[str, Any]]):
    """Apply ``row_fn`` to every row, passing the image through undecoded, into ``hub_features``
    (a ``Dataset`` is converted now, a streamed ``IterableDataset`` while it is read)."""
    from datasets import Image as ImageFeature
    from datasets import IterableDataset

    ds = ds.cast_column("image", ImageFeature(decode=False))
    convert = functools.partial(_with_image, row_fn=row_fn)
    if isinstance(ds, IterableDataset):
        # The features go on afterwards: a streamed map given features= marks its rows as typed,
        # and a later cast_column("image", decode=True) would then never decode them.
        out = ds.map(convert, with_indices=True, remove_columns=ds.column_names)
        return out.cast(hub_features(decode=True))
    out = ds.map(convert, with_indices=True, remove_columns=ds.column_names, features=hub_features(decode=False))
    return out.cast_column("image", ImageFeature(decode=True))


def _with_image(row: dict[str, Any], idx: int, row_fn: Callable) -> dict[str, Any]:
    return {"image": row["image"], **row_fn(row, idx)}


def _image_size(image: dict[str, Any]) -> tuple[int, int]:
    """(width, height) of an undecoded image (reads only the file header)."""
    if not image or not (image.get("bytes") or image.get("path")):
        raise ValueError("A row has no image (neither bytes nor a path); drop such rows before mapping.")
    if image.get("bytes"):
        with Image.open(io.BytesIO(image["bytes"])) as im:
            return im.size
    with Image.open(image["path"]) as im:
        return im.size


def _caption_texts(sentences: Any) -> list[str]:
    """Caption strings from the shapes ``sentences`` takes in COCO-style data sets."""
    if sentences is None:
        return []
    if isinstance(sentences, str):
        return [sentences.strip()]
    if isinstance(sentences, dict):  # one sentence per row: {raw, tokens, ...}
        return [sentences["raw"].strip()] if sentences.get("raw") else []
    texts = []
    for s in sentences:
        texts += _caption_texts(s)
    return texts


def _coco_groups(ds, source: str, text_col: str, id_col: str | None) -> Iterator[dict[str, Any]]:
    """Records of a streamed COCO (image not decoded): consecutive rows of one image become one."""
    key, record, index = None, None, 0
    # ds.iter(): read every row here even inside a DataLoader worker (iterating ds itself would
    # give each worker only some of the files)
    for chunk in ds.iter(batch_size=256):
        for i in range(len(chunk["image"])):
            row_key = chunk[id_col][i] if id_col else index
            caps = _caption_texts(chunk[text_col][i])
            if record is not None and row_key == key:
                record["captions"].extend(caps)
            else:
                if record is not None:
                    yield _with_first_caption(record)
                key, record = row_key, {"image": chunk["image"][i], **_empty(source, row_key), "captions": list(caps)}
            index += 1
    if record is not None:
        yield _with_first_caption(record)


def _with_first_caption(record: dict[str, Any]) -> dict[str, Any]:
    record["caption"] = record["captions"][0] if record["captions"] else ""
    return record


def map_coco_captions(ds, source: str = "HuggingFaceM4/COCO"):
    """COCO captions (one row per caption, or per image) -> one record per image with ``captions``.

    In memory, every row of an image joins its record wherever it is; streamed, the rows of an
    image are joined when they follow each other (as in the hub's COCO, five rows per image), and
    a row of an image seen earlier but not just before starts a new record.
    """
    from datasets import Image as ImageFeature
    from datasets import IterableDataset

    _require(ds, ["image"], source)
    text_col = next((c for c in ("sentences", "captions", "caption") if c in ds.column_names), None)
    if text_col is None:
        raise ValueError(f"{source}: expected a 'sentences', 'captions' or 'caption' column, got {ds.column_names}")
    id_col = next((c for c in ("cocoid", "imgid", "image_id") if c in ds.column_names), None)
    if isinstance(ds, IterableDataset):
        ds = ds.select_columns(["image", text_col] + ([id_col] if id_col else []))
        ds = ds.cast_column("image", ImageFeature(decode=False))
        grouped = IterableDataset.from_generator(
            _coco_groups, features=hub_features(decode=False),
            gen_kwargs={"ds": ds, "source": source, "text_col": text_col, "id_col": id_col})
        return grouped.cast_column("image", ImageFeature(decode=True))
    ids = list(ds[id_col]) if id_col else list(range(len(ds)))
    texts = [_caption_texts(t) for t in ds[text_col]]
    first: dict[Any, int] = {}
    grouped: dict[Any, list[str]] = {}
    for i, (key, caps) in enumerate(zip(ids, texts)):
        first.setdefault(key, i)
        grouped.setdefault(key, []).extend(caps)
    ds = ds.select(sorted(first.values())).select_columns(["image"])
    keys = [ids[i] for i in sorted(first.values())]

    def row_fn(row: dict[str, Any], idx: int) -> dict[str, Any]:
        rec = _empty(source, keys[idx])
        caps = grouped[keys[idx]]
        rec.update(caption=caps[0] if caps else "", captions=caps)
        return rec

    return _convert(ds, row_fn)


def _most_common(answers: list[str]) -> str:
    return Counter(answers).most_common(1)[0][0] if answers else ""


def _answer_texts(answers: Any) -> list[str]:
    """Answer strings from ``[{answer, ...}]`` (VQAv2), ``[str]`` (TextVQA) or a single string."""
    if answers is None:
        return []
    if isinstance(answers, str):
        answers = [answers]
    texts = []
    for a in answers:
        if isinstance(a, dict):
            a = a.get("answer")
        if isinstance(a, str) and a:
            texts.append(a)
    return texts


def map_vqav2(ds, source: str = "lmms-lab/VQAv2"):
    """VQAv2 (one row per question) -> records with one QA pair carrying all 10 human answers."""
    _require(ds, ["image", "question"], source)
    return _convert(ds, functools.partial(_vqav2_row, source=source))


# The row functions are module-level (bound with functools.partial), so that a streamed data set
# can be pickled into DataLoader workers started with spawn or forkserver.
def _vqav2_row(row: dict[str, Any], idx: int, source: str) -> dict[str, Any]:
    answers = _answer_texts(row.get("answers"))
    answer = row.get("multiple_choice_answer") or _most_common(answers)
    rec = _empty(source, row.get("question_id", idx))
    rec["qa"] = [{"question": row["question"], "answer": answer or "",
                  "kind": row.get("answer_type") or "vqa", "answers": answers}]
    return rec


def map_textvqa(ds, source: str = "lmms-lab/textvqa"):
    """TextVQA -> records with one QA pair (answer = most common of the human answers)."""
    _require(ds, ["image", "question"], source)
    return _convert(ds, functools.partial(_textvqa_row, source=source))


def _textvqa_row(row: dict[str, Any], idx: int, source: str) -> dict[str, Any]:
    answers = _answer_texts(row.get("answers"))
    rec = _empty(source, row.get("question_id", idx))
    rec["qa"] = [{"question": row["question"], "answer": _most_common(answers), "kind": "text", "answers": answers}]
    return rec


def xywh_to_yxyx(bbox: list[float], width: int, height: int) -> list[float]:
    """COCO pixel box ``[x, y, w, h]`` -> normalised ``[y0, x0, y1, x1]``, clipped to [0, 1]."""
    if bbox is None or isinstance(bbox, (str, bytes)) or len(bbox) != 4:
        raise ValueError(f"A COCO box is 4 numbers [x, y, width, height] in pixels, got {bbox!r}")
    if width <= 0 or height <= 0:
        raise ValueError(f"Image size must be positive to normalise a box, got {width}x{height}")
    x, y, w, h = (float(v) for v in bbox)
    if w < 0 or h < 0:
        raise ValueError(f"COCO box {bbox} has a negative width or height")
    clip = lambda v: min(1.0, max(0.0, v))  # noqa: E731
    return [clip(y / height), clip(x / width), clip((y + h) / height), clip((x + w) / width)]


def map_refcoco(ds, source: str = "lmms-lab/RefCOCO"):
    """RefCOCO (one row per referred object) -> one object whose label is the first expression.

    All expressions of the object go to ``captions`` (so ``make_example(..., "refer")`` uses the
    first, and you can sample others); ``bbox`` (x, y, w, h pixels) is normalised by the image size.
    """
    _require(ds, ["image", "bbox", "answer"], source)
    return _convert(ds, functools.partial(_refcoco_row, source=source))


def _refcoco_row(row: dict[str, Any], idx: int, source: str) -> dict[str, Any]:
    width, height = _image_size(row["image"])
    answer = row["answer"] or []
    answer = [answer] if isinstance(answer, str) else answer  # one expression, not its letters
    expressions = [e.strip() for e in answer if e and e.strip()]
    rec = _empty(source, row.get("question_id", idx))
    label = expressions[0] if expressions else "object"
    # float32, as the column stores it: a streamed record then equals the in-memory one
    box = [float(np.float32(v)) for v in xywh_to_yxyx(row["bbox"], width, height)]
    rec.update(caption=label, captions=expressions, objects=[{"label": label, "box": box}])
    return rec


HUB_DATASETS: dict[str, tuple[str, Callable]] = {
    "coco_captions": ("HuggingFaceM4/COCO", map_coco_captions),
    "vqav2": ("lmms-lab/VQAv2", map_vqav2),
    "textvqa": ("lmms-lab/textvqa", map_textvqa),
    "refcoco": ("lmms-lab/RefCOCO", map_refcoco),
}


#: The task a hub data set trains in :class:`HubStream` (TextVQA's questions are about the text
#: in the photo: PaLI's reading skill, asked as VQA since there is no transcription to copy).
HUB_TASKS: dict[str, str] = {"coco_captions": "caption", "vqav2": "vqa", "textvqa": "vqa", "refcoco": "refer"}

#: The split a transfer run trains on. lmms-lab's VQAv2 and RefCOCO are evaluation copies without a
#: train split: transfer trains on their validation split, evaluate on the others (VQAv2 "testdev",
#: RefCOCO "testA"/"testB").
HUB_TRAIN_SPLITS: dict[str, str] = {"coco_captions": "train", "vqav2": "validation", "textvqa": "train",
                                    "refcoco": "val"}


def _local_files(path: str | Path, split: str) -> list[str]:
    """The parquet files of ``split`` in a local folder laid out like a hub repository
    (``data/<split>-00000-of-00004.parquet`` or ``<split>/*.parquet``)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"path={str(path)!r} is not a folder. Pass the folder that holds the data set's "
                                "parquet files (as on the hub: data/<split>-00000-of-00001.parquet).")
    every = sorted(p for p in folder.rglob("*.parquet") if p.is_file())
    files = [p for p in every if p.name.startswith(f"{split}-") or p.name == f"{split}.parquet"
             or p.parent.name == split]
    if not files:
        found = ", ".join(str(p.relative_to(folder)) for p in every[:8]) or "no parquet file"
        raise FileNotFoundError(f"No parquet file of split {split!r} under {folder} (found: {found}). Name them "
                                f"{split}-00000-of-00001.parquet (the hub's layout) or pass data_files=... .")
    return [str(p) for p in files]


def load_hub(name: str, split: str = "validation", num_examples: int | None = None, *, streaming: bool = False,
             path: str | Path | None = None, data_files: Any = None, **load_kwargs):
    """Load and map a hub data set into the course schema: ``name`` is a key of ``HUB_DATASETS``.

    - From the hub (needs internet the first time): ``load_hub("vqav2", "validation")``.
    - From a local copy in the hub's format (parquet files written by ``datasets``, as the hub
      stores them): ``path=folder`` (files ``data/<split>-*.parquet`` or ``<split>/*.parquet``) or
      ``data_files=`` (a file, a list or ``{split: files}``, as for ``load_dataset("parquet")``).
    - ``streaming=True``: a ``datasets.IterableDataset`` whose rows are read and mapped while you
      iterate (nothing downloaded or converted ahead); COCO's caption rows are grouped per image
      as they come (consecutive rows of one ``cocoid``). Without it, a ``datasets.Dataset``.

    ``num_examples`` keeps the first rows only (``split[:n]``; streamed: the first ``n`` rows read).
    Extra keyword arguments go to ``datasets.load_dataset`` (e.g. ``cache_dir``, ``revision``).
    RefCOCO's splits are val/test/testA/testB; VQAv2's validation/testdev/test.
    """
    if name not in HUB_DATASETS:
        raise ValueError(f"Unknown hub data set {name!r}. Choose one of: {', '.join(HUB_DATASETS)}")
    if num_examples is not None and (isinstance(num_examples, bool) or not isinstance(num_examples, int)
                                     or num_examples < 1):
        raise ValueError(f"num_examples must be a positive int or None (all rows), got {num_examples!r}")
    if not isinstance(split, str) or not split:
        raise ValueError(f"split must be a split name such as 'validation', got {split!r}")
    if num_examples is not None and "[" in split:
        raise ValueError(f"split={split!r} already slices the rows; drop num_examples or the slice.")
    if streaming and "[" in split:
        raise ValueError(f"split={split!r}: a streamed split cannot be sliced; use num_examples=n for its first rows.")
    if path is not None and data_files is not None:
        raise ValueError("Pass either path (a folder in the hub's layout) or data_files (parquet files), not both.")
    from datasets import load_dataset

    repo, mapper = HUB_DATASETS[name]
    spec = split if num_examples is None or streaming else f"{split}[:{num_examples}]"
    if path is not None:
        data_files = {split: _local_files(path, split.split("[")[0])}
    if data_files is not None:
        if not isinstance(data_files, Mapping):
            data_files = {split.split("[")[0]: data_files}
        ds = load_dataset("parquet", data_files=dict(data_files), split=spec, streaming=streaming, **load_kwargs)
    else:
        try:
            ds = load_dataset(repo, split=spec, streaming=streaming, **load_kwargs)
        except ConnectionError as e:
            raise ConnectionError(
                f"Could not download {repo} from the Hugging Face hub ({e}). load_hub needs internet "
                "access the first time; afterwards the copy in the datasets cache is used (set "
                "HF_DATASETS_OFFLINE=1 to use it without a connection). The course itself runs on "
                "ShapesWorld, which needs no download; a local copy loads with path=... or data_files=... ."
            ) from e
    if streaming and num_examples is not None:
        ds = ds.take(num_examples)
    return mapper(ds, source=repo)


# ---------------------------------------------------------------------------------------------
# Training batches from a (streamed) hub data set
# ---------------------------------------------------------------------------------------------


def _open_image(image: Any) -> Image.Image:
    """An undecoded ``{bytes, path}`` image (or a PIL image) as an RGB ``PIL.Image``."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if not image or not (image.get("bytes") or image.get("path")):
        raise ValueError("A row has no image (neither bytes nor a path).")
    with Image.open(io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"]) as im:
        return im.convert("RGB")


class HubStream(StepStream):
    """PaLI-3 training batches of one task from a mapped hub data set, read in order.

    Args:
        records: a data set in the course schema (``load_hub(..., streaming=True)``; an in-memory
            ``datasets.Dataset`` is streamed with ``to_iterable_dataset()``).
        tokenizer: the course tokenizer.
        task: the PaLI task to train (``HUB_TASKS`` gives each data set's).
        batch_size, max_prompt_len, max_answer_len, image_size, seed, caption: as for
            :class:`~pali3_edu.data.streaming.ShapesWorldStream`.
        shuffle_buffer: rows are shuffled through a buffer of this many (``IterableDataset.shuffle``,
            seeded by ``seed``, reshuffled every pass); 0 keeps the source's order, every pass.
            (``datasets`` pauses a few seconds whenever a shuffled read of several files ends:
            once per pass.)
        record_fn: applied to each record before its examples are made (e.g. box quantisation).
        start_step: the first step an iteration yields.

    Batch ``k`` holds the ``k``-th run of ``batch_size`` *usable* rows: rows whose example for
    ``task`` exists, has a non-empty answer and fits the length limits (real captions and questions
    can be long; cutting them would teach broken text, so such rows are skipped). After the last
    row the data set is read again (the next epoch). Every worker reads all rows but decodes the
    images of its own steps only; a resumed run reads (without decoding) the rows before its step.
    Batches are the same whatever the number of workers.

    ``batch(step)`` returns ``pixel_values`` ``(B, 3, image_size, image_size)`` float in [-1, 1],
    ``input_ids``/``attention_mask`` ``(B, S)``, ``labels`` ``(B, T)`` (-100 on padding) and
    ``task`` ``(B,)`` (all the same task).
    """

    def __init__(
        self,
        records: Any,
        tokenizer: Any,
        task: str,
        batch_size: int,
        max_prompt_len: int,
        max_answer_len: int,
        image_size: int,
        seed: int = 0,
        *,
        shuffle_buffer: int = 0,
        caption: str = "canonical",
        record_fn: RecordFn | None = None,
        start_step: int = 0,
    ):
        from datasets import Dataset, IterableDataset
        from datasets import Image as ImageFeature

        from pali3_edu.data.streaming import _check_int
        from pali3_edu.data.tasks import TASKS

        if isinstance(records, Dataset):
            records = records.to_iterable_dataset()
        if not isinstance(records, IterableDataset):
            raise TypeError(f"records must be a data set in the course schema (load_hub(..., streaming=True)), got "
                            f"{type(records).__name__}.")
        missing = [c for c in ("image", "caption", "qa", "objects") if c not in (records.column_names or [])]
        if missing:
            raise ValueError(f"records lack the course column(s) {missing}; map the source first (load_hub or "
                             "the map_* functions of pali3_edu.data.hub).")
        if task not in TASKS:
            raise ValueError(f"Unknown task {task!r}; the tasks are {', '.join(TASKS)} (HUB_TASKS has each hub "
                             "data set's).")
        if caption not in ("canonical", "random"):
            raise ValueError(f"caption must be 'canonical' or 'random', got {caption!r}")
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.max_prompt_len = _check_int("max_prompt_len", max_prompt_len, 2, hint=" (text + EOS, in tokens)")
        self.max_answer_len = _check_int("max_answer_len", max_answer_len, 2, hint=" (text + EOS, in tokens)")
        self.image_size = _check_int("image_size", image_size, 1, hint=" (the model's resolution in pixels)")
        self.shuffle_buffer = _check_int("shuffle_buffer", shuffle_buffer, 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        if record_fn is not None and not callable(record_fn):
            raise TypeError(f"record_fn must be a function list[record] -> list[record] or None, got {record_fn!r}")
        self.records = records.cast_column("image", ImageFeature(decode=False))  # decoded only when used
        self.tokenizer, self.task, self.seed, self.caption = tokenizer, task, seed, caption
        self.record_fn = record_fn
        self.start_step = _check_int("start_step", start_step, 0)

    def __repr__(self) -> str:
        return (f"HubStream(task={self.task!r}, batch_size={self.batch_size}, image_size={self.image_size}, "
                f"shuffle_buffer={self.shuffle_buffer}, seed={self.seed}, start_step={self.start_step})")

    def _usable(self, rows: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
        """Each row as a record ready for ``task`` (``record_fn`` applied), or None if it cannot be used."""
        from pali3_edu.data.multimodal import all_examples

        out: list[dict[str, Any] | None] = []
        texts: list[tuple[int, str, str]] = []  # (row, part, text)
        for i, row in enumerate(rows):
            record = {k: v for k, v in row.items() if k != "image"}
            if self.record_fn is not None:
                record = self.record_fn([record])[0]
            try:
                examples = all_examples(record, self.task, self.caption)
            except ValueError:  # the record cannot make this task (no caption, no object, ...)
                out.append(None)
                continue
            if not examples or any(not ex["suffix"].strip() for ex in examples):
                out.append(None)
                continue
            out.append({**record, "image": row["image"]})
            texts += [(i, part, ex[part]) for ex in examples for part in ("prefix", "suffix")]
        if texts:
            ids = self.tokenizer.batch_encode([t for _, _, t in texts], padding=False, truncation=False,
                                              return_tensors=None)["input_ids"]
            for (i, part, _), tokens in zip(texts, ids):
                limit = self.max_prompt_len if part == "prefix" else self.max_answer_len
                if len(tokens) > limit:
                    out[i] = None
        return out

    def _rows(self) -> Iterator[dict[str, Any]]:
        """Usable records, epoch after epoch (endless)."""
        ds = self.records
        if self.shuffle_buffer:
            ds = ds.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer)
        for epoch in itertools.count():
            if self.shuffle_buffer:  # a new order each pass (an epoch > 0 would also reorder the files)
                ds.set_epoch(epoch)
            found = 0
            # ds.iter(): every worker reads all rows (iterating ds itself would give each worker
            # only some of the files, and the batches would depend on the number of workers)
            for chunk in ds.iter(batch_size=64):
                rows = [dict(zip(chunk, values)) for values in zip(*chunk.values())]
                for record in self._usable(rows):
                    if record is not None:
                        found += 1
                        yield record
            if not found:
                raise ValueError(
                    f"No row of this data set can make a {self.task!r} example that fits max_prompt_len="
                    f"{self.max_prompt_len} and max_answer_len={self.max_answer_len} (with a non-empty answer). "
                    "Check the task (HUB_TASKS), the split (a test split may have no answers) or raise the limits.")

    def batches(self, first: int, stride: int) -> Iterator[tuple[int, dict[str, Tensor]]]:
        if get_worker_info() is not None:
            try:  # fsspec's event loop does not survive a fork: give the worker its own
                import fsspec

                fsspec.asyn.reset_lock()
            except (ImportError, AttributeError):
                pass
        rows = self._rows()
        for step in itertools.count():
            group = list(itertools.islice(rows, self.batch_size))
            if step >= first and (step - first) % stride == 0:
                yield step, self._batch(step, group)

    def _batch(self, step: int, group: list[dict[str, Any]]) -> dict[str, Tensor]:
        from pali3_edu.data.streaming import images_to_uint8_fast

        images = images_to_uint8_fast([_open_image(r["image"]) for r in group], self.image_size)
        records = [{k: v for k, v in r.items() if k != "image"} for r in group]
        data = step_mixture(images, records, self.tokenizer, {self.task: 1.0}, self.max_prompt_len,
                            self.max_answer_len, self.seed, self.caption)
        return data.get_batch(step)

    def batch(self, step: int) -> dict[str, Tensor]:
        """The batch of ``step`` (reads the rows before it: meant for a look, not for training)."""
        return next(self.starting_at(step).batches(step, 1))[1]


def hub_batches(
    name: str,
    tokenizer: Any,
    *,
    batch_size: int,
    max_prompt_len: int,
    max_answer_len: int,
    image_size: int,
    split: str | None = None,
    task: str | None = None,
    path: str | Path | None = None,
    data_files: Any = None,
    seed: int = 0,
    shuffle_buffer: int = 1000,
    record_fn: RecordFn | None = None,
    num_workers: int | None = None,
    pin_memory: bool | None = None,
    prefetch_factor: int = 2,
    **load_kwargs: Any,
) -> StreamLoader:
    """``get_batch(step)`` training batches of a hub data set, streamed (or read from a local copy
    with ``path``/``data_files``): :func:`load_hub` with ``streaming=True``, :class:`HubStream` and a
    :class:`~pali3_edu.data.streaming.StreamLoader`. ``split`` defaults to ``HUB_TRAIN_SPLITS[name]``,
    ``task`` to ``HUB_TASKS[name]``."""
    if name not in HUB_DATASETS:
        raise ValueError(f"Unknown hub data set {name!r}. Choose one of: {', '.join(HUB_DATASETS)}")
    records = load_hub(name, split or HUB_TRAIN_SPLITS[name], streaming=True, path=path, data_files=data_files,
                       **load_kwargs)
    stream = HubStream(records, tokenizer, task or HUB_TASKS[name], batch_size, max_prompt_len, max_answer_len,
                       image_size, seed, shuffle_buffer=shuffle_buffer, record_fn=record_fn)
    return StreamLoader(stream, num_workers, pin_memory=pin_memory, prefetch_factor=prefetch_factor)


__all__ = [
    "HUB_DATASETS", "HUB_TASKS", "HUB_TRAIN_SPLITS", "HubStream", "hub_batches", "hub_features", "load_hub",
    "map_coco_captions", "map_refcoco", "map_textvqa", "map_vqav2", "xywh_to_yxyx",
]
