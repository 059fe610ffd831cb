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
without decoding.

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

import io
from collections import Counter
from collections.abc import Callable
from typing import Any

from PIL import Image


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
    """Check that ``ds`` is one split of a data set with the source's columns; say what to do if not."""
    from datasets import Dataset, DatasetDict

    if isinstance(ds, DatasetDict):
        raise TypeError(
            f"Got a DatasetDict with splits {list(ds)}; pass one split, e.g. ds[{next(iter(ds), 'validation')!r}]."
        )
    if not isinstance(ds, Dataset):
        raise TypeError(
            f"Expected a datasets.Dataset with the columns of {source}, got {type(ds).__name__}. Load "
            "one with datasets.load_dataset(..., split=...) (not streaming), or Dataset.from_list(rows)."
        )
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise ValueError(
            f"This does not look like {source}: missing column(s) {missing}; it has {ds.column_names}."
        )


def _convert(ds, row_fn: Callable[[dict[str, Any], int], dict[str, Any]]):
    """Apply ``row_fn`` to every row, passing the image through undecoded, into ``hub_features``."""
    from datasets import Image as ImageFeature

    ds = ds.cast_column("image", ImageFeature(decode=False))
    out = ds.map(
        lambda row, idx: {"image": row["image"], **row_fn(row, idx)},
        with_indices=True,
        remove_columns=ds.column_names,
        features=hub_features(decode=False),
    )
    return out.cast_column("image", ImageFeature(decode=True))


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


def map_coco_captions(ds, source: str = "HuggingFaceM4/COCO"):
    """COCO captions (one row per caption, or per image) -> one record per image with ``captions``."""
    _require(ds, ["image"], source)
    text_col = next((c for c in ("sentences", "captions", "caption") if c in ds.column_names), None)
    if text_col is None:
        raise ValueError(f"{source}: expected a 'sentences', 'captions' or 'caption' column, got {ds.column_names}")
    id_col = next((c for c in ("cocoid", "imgid", "image_id") if c in ds.column_names), None)
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

    def row_fn(row: dict[str, Any], idx: int) -> dict[str, Any]:
        answers = _answer_texts(row.get("answers"))
        answer = row.get("multiple_choice_answer") or _most_common(answers)
        rec = _empty(source, row.get("question_id", idx))
        rec["qa"] = [{"question": row["question"], "answer": answer or "",
                      "kind": row.get("answer_type") or "vqa", "answers": answers}]
        return rec

    return _convert(ds, row_fn)


def map_textvqa(ds, source: str = "lmms-lab/textvqa"):
    """TextVQA -> records with one QA pair (answer = most common of the human answers)."""
    _require(ds, ["image", "question"], source)

    def row_fn(row: dict[str, Any], idx: int) -> dict[str, Any]:
        answers = _answer_texts(row.get("answers"))
        rec = _empty(source, row.get("question_id", idx))
        rec["qa"] = [{"question": row["question"], "answer": _most_common(answers),
                      "kind": "text", "answers": answers}]
        return rec

    return _convert(ds, row_fn)


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

    def row_fn(row: dict[str, Any], idx: int) -> dict[str, Any]:
        width, height = _image_size(row["image"])
        answer = row["answer"] or []
        answer = [answer] if isinstance(answer, str) else answer  # one expression, not its letters
        expressions = [e.strip() for e in answer if e and e.strip()]
        rec = _empty(source, row.get("question_id", idx))
        label = expressions[0] if expressions else "object"
        rec.update(caption=label, captions=expressions,
                   objects=[{"label": label, "box": xywh_to_yxyx(row["bbox"], width, height)}])
        return rec

    return _convert(ds, row_fn)


HUB_DATASETS: dict[str, tuple[str, Callable]] = {
    "coco_captions": ("HuggingFaceM4/COCO", map_coco_captions),
    "vqav2": ("lmms-lab/VQAv2", map_vqav2),
    "textvqa": ("lmms-lab/textvqa", map_textvqa),
    "refcoco": ("lmms-lab/RefCOCO", map_refcoco),
}


def load_hub(name: str, split: str = "validation", num_examples: int | None = None, **load_kwargs):
    """Download (needs internet) and map a hub data set: ``name`` is a key of ``HUB_DATASETS``.

    ``num_examples`` keeps the first rows only (``split[:n]``; the files are still downloaded).
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
    from datasets import load_dataset

    repo, mapper = HUB_DATASETS[name]
    spec = split if num_examples is None else f"{split}[:{num_examples}]"
    try:
        ds = load_dataset(repo, split=spec, **load_kwargs)
    except ConnectionError as e:
        raise ConnectionError(
            f"Could not download {repo} from the Hugging Face hub ({e}). load_hub needs internet "
            "access the first time; afterwards the copy in the datasets cache is used (set "
            "HF_DATASETS_OFFLINE=1 to use it without a connection). The course itself runs on "
            "ShapesWorld, which needs no download."
        ) from e
    return mapper(ds, source=repo)
