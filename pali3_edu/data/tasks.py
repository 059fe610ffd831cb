"""PaLI task formats: turn a data set record into a (prefix, suffix) text pair.

The encoder sees the image tokens plus the *prefix* (the prompt); the decoder learns to write the
*suffix* (the answer). One model, many tasks, told apart only by the prompt:

| task     | prefix                       | suffix                                              |
|----------|------------------------------|-----------------------------------------------------|
| caption  | ``caption en``               | ``a large red circle left of a small blue square``  |
| vqa      | ``answer en what color ...?``| ``red``                                             |
| ocr      | ``ocr``                      | ``cat``                                             |
| detect   | ``detect circle``            | ``<loc0123><loc0456><loc0789><loc0999> circle ; …`` |
| refer    | ``detect red circle``        | ``<loc…><loc…><loc…><loc…> red circle`` (one box)   |

The prefixes and the number of location bins come from :mod:`pali3_edu.tokens`, the one place
where the course writes its token facts down.

Boxes become four location tokens ``y0 x0 y1 x1``, each one of ``NUM_LOC_BINS = 1024`` bins.

**Binning convention.** A coordinate ``v`` in [0, 1] is encoded as ``round(v * 1023)`` and decoded
as ``bin / 1023`` (big_vision's training code encodes this way; PaliGemma's public demo parser
divides by 1024 instead, which shifts boxes by up to 0.1 %). With ``/1023`` both 0 and 1 are exact
and the round trip is off by at most half a bin, ``0.5 / 1023``.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from pali3_edu.tokens import NUM_LOC_BINS, TASK_PREFIXES, bin_to_coord, coord_to_bin, loc_token

TASKS: tuple[str, ...] = tuple(TASK_PREFIXES)  # ("caption", "vqa", "ocr", "detect", "refer")
LOC_TOKENS: tuple[str, ...] = tuple(loc_token(i) for i in range(NUM_LOC_BINS))
PREFIXES = TASK_PREFIXES  # the older name, kept as an alias
SEPARATOR = " ; "  # between detected instances

# ASCII digits only: ``\d`` would also accept other scripts' digits ("<loc٠١٢٣>"), which int()
# happily converts but which no tokenizer ever writes.
_LOC_RE = re.compile(r"<loc([0-9]{4})>")
_INSTANCE_RE = re.compile(r"^((?:<loc[0-9]{4}>){4})\s*(.*)$", re.DOTALL)
# Any token of the course vocabulary that is not ordinary text (a label must not contain one).
_SPECIAL_RE = re.compile(
    r"<(?:pad|/s|unk|loc[0-9]*|seg[0-9]*|extra_id_[0-9]+)>|\[(?:NLU|NLG|S2S)\]"
)
_END_RE = re.compile(r"(?:\s*<pad>)+\s*$")  # padding after the output
_START_RE = re.compile(r"^\s*(?:<pad>\s*)+")  # the decoder-start token (pad) before it


# --------------------------------------------------------------------------------------------
# <loc> codec
# --------------------------------------------------------------------------------------------


def encode_box(box: Sequence[float]) -> str:
    """``(y0, x0, y1, x1)`` in [0, 1] -> ``"<loc0123><loc0456><loc0789><loc0999>"``.

    Each value becomes bin ``round(v * 1023)``. Raises ``ValueError`` for a box that is not four
    finite numbers in [0, 1] with ``y0 <= y1`` and ``x0 <= x1``.
    """
    try:
        values = [float(v) for v in box]
    except (TypeError, ValueError):
        raise ValueError(f"A box must be four numbers (y0, x0, y1, x1), got {box!r}") from None
    if len(values) != 4:
        raise ValueError(f"A box must have 4 values (y0, x0, y1, x1), got {len(values)}: {box!r}")
    names = ("y0", "x0", "y1", "x1")
    for name, v in zip(names, values):
        if not math.isfinite(v) or not 0.0 <= v <= 1.0:
            raise ValueError(
                f"Box {box!r}: {name}={v} is outside [0, 1]. Boxes must be normalised by the image "
                "size (divide pixel coordinates by the height/width) and clipped to the image."
            )
    y0, x0, y1, x1 = values
    if y1 < y0:
        raise ValueError(f"Box {box!r}: y1={y1} < y0={y0}; the order is (y0, x0, y1, x1), top before bottom.")
    if x1 < x0:
        raise ValueError(f"Box {box!r}: x1={x1} < x0={x0}; the order is (y0, x0, y1, x1), left before right.")
    return "".join(LOC_TOKENS[coord_to_bin(v)] for v in values)


def decode_box(text: str) -> tuple[float, float, float, float]:
    """``"<loc0123><loc0456><loc0789><loc0999>"`` -> ``(y0, x0, y1, x1)`` with ``v = bin / 1023``.

    Raises ``ValueError`` unless ``text`` is exactly four location tokens (surrounding spaces ok)
    that make a valid box: an inverted one (``y1 < y0`` or ``x1 < x0``, e.g. the corners
    written in the wrong order) is an error too, as in :func:`encode_box`. To read a model's
    output without exceptions use :func:`parse_detection`.
    """
    if not isinstance(text, str):
        raise TypeError(f"decode_box() takes a str of four <loc> tokens, got {type(text).__name__}")
    text = text.strip()
    bins = [int(b) for b in _LOC_RE.findall(text)]
    if len(bins) != 4 or "".join(LOC_TOKENS[b] if b < NUM_LOC_BINS else "" for b in bins) != text:
        raise ValueError(f"Expected exactly four tokens <loc0000>..<loc1023>, got {text!r}")
    y0, x0, y1, x1 = (bin_to_coord(b) for b in bins)
    if y1 < y0 or x1 < x0:
        which = "y1 < y0 (bottom above top)" if y1 < y0 else "x1 < x0 (right edge left of the left)"
        raise ValueError(
            f"{text!r} is an inverted box: {which}. The order is y0 x0 y1 x1 (top-left corner, "
            "then bottom-right corner); use parse_detection() to read model output without raising."
        )
    return (y0, x0, y1, x1)


def format_detection(boxes: Sequence[Sequence[float]], labels: Sequence[str]) -> str:
    """``[box, …], [label, …]`` -> ``"<loc…>×4 label ; <loc…>×4 label"`` (PaLI detection output)."""
    if len(boxes) != len(labels):
        raise ValueError(f"{len(boxes)} boxes but {len(labels)} labels")
    return SEPARATOR.join(f"{encode_box(b)} {label}" for b, label in zip(boxes, labels))


@dataclass
class DetectionResult:
    """What ``parse_detection`` found: boxes ``(y0, x0, y1, x1)`` in [0, 1] and their labels.

    ``ok`` is False when some part of the text was malformed; ``error`` then says what and where,
    and ``boxes``/``labels`` hold the instances that did parse.
    """

    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    ok: bool = True
    error: str | None = None


def parse_detection(text: str) -> DetectionResult:
    """Parse a model's detection output; never raises.

    Well-formed output is zero or more instances ``<locA><locB><locC><locD> label`` joined by
    ``;``. Empty text means "nothing detected" (ok). Anything else — missing or extra location
    tokens, bins above 1023, digits other than ASCII 0-9, a box with y1 < y0 or x1 < x0, a missing
    label, a label holding a special token (``<unk>``, ``<seg…>``, ``[NLU]``, ``<extra_id_…>``, a
    ``<pad>`` in the middle) — makes that instance invalid: it is left out and ``ok=False``.

    Text decoded without ``skip_special_tokens`` is accepted: the output ends at the first
    ``</s>`` (what follows is not part of it, as in ``Tokenizer.batch_decode``), and ``<pad>``
    tokens before it (the decoder-start token) or after it (batch padding) are dropped.
    """
    result = DetectionResult()
    if not isinstance(text, str):
        return DetectionResult(ok=False, error=f"expected a string, got {type(text).__name__}")
    text = text.split("</s>", 1)[0]
    text = _END_RE.sub("", _START_RE.sub("", text))
    if not text.strip():
        return result
    errors: list[str] = []
    for i, part in enumerate(text.split(";")):
        part = part.strip()
        where = f"instance {i} ({part if len(part) <= 60 else part[:57] + '...'!r})"
        if not part:
            errors.append(f"instance {i} is empty (two ';' in a row or a trailing ';')")
            continue
        m = _INSTANCE_RE.match(part)
        if m is None:
            n = len(_LOC_RE.findall(part))
            errors.append(f"{where}: expected 4 <locNNNN> tokens at the start, found {n} in the wrong form")
            continue
        locs, label = m.group(1), m.group(2).strip()
        if "<loc" in label:
            errors.append(f"{where}: more than 4 location tokens")
            continue
        if not label:
            errors.append(f"{where}: the box has no label after its 4 location tokens")
            continue
        special = _SPECIAL_RE.search(label)
        if special is not None:
            errors.append(f"{where}: the label contains the special token {special.group()!r}")
            continue
        bins = [int(b) for b in _LOC_RE.findall(locs)]
        if max(bins) >= NUM_LOC_BINS:
            errors.append(f"{where}: location bin {max(bins)} > {NUM_LOC_BINS - 1}")
            continue
        y0, x0, y1, x1 = (bin_to_coord(b) for b in bins)
        if y1 < y0 or x1 < x0:
            errors.append(f"{where}: box has y1 < y0 or x1 < x0 (order is y0 x0 y1 x1)")
            continue
        result.boxes.append((y0, x0, y1, x1))
        result.labels.append(label)
    if errors:
        result.ok = False
        result.error = "; ".join(errors)
    return result


# --------------------------------------------------------------------------------------------
# Records -> (prefix, suffix)
# --------------------------------------------------------------------------------------------


def _label(obj: dict[str, Any]) -> str:
    """Class name of an object: ShapesWorld's ``shape`` or a hub data set's ``label``."""
    return obj.get("label") or obj["shape"]


def _name(obj: dict[str, Any]) -> str:
    """Referring expression: ``"red circle"`` in ShapesWorld, the ``label`` for hub data."""
    if obj.get("color") and obj.get("shape"):
        return f"{obj['color']} {obj['shape']}"
    return obj["label"]


def _reading_order(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(objs, key=lambda o: (o["box"][0], o["box"][1]))


def make_example(record: dict[str, Any], task: str, rng: random.Random, caption: str = "canonical") -> dict[str, str]:
    """One training example ``{"prefix", "suffix", "task"}`` for ``task`` from a data set record.

    ``rng`` picks among the possibilities (which question, which class, which object), so the
    same record gives varied examples. ``caption="canonical"`` uses ``record["caption"]``;
    ``"random"`` picks one of ``record["captions"]``. Detection lists every object of one class
    present in the scene, in reading order (top to bottom, then left to right). Raises
    ``ValueError`` for an unknown task or one the record cannot support (``ocr`` without a word,
    ``refer`` when no object has a unique name, …).
    """
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}. Choose one of: {', '.join(TASKS)}")
    if task == "caption":
        if caption == "random" and record.get("captions"):
            text = rng.choice(list(record["captions"]))
        elif caption in ("canonical", "random"):
            text = record.get("caption") or (record.get("captions") or [""])[0]
        else:
            raise ValueError(f"caption must be 'canonical' or 'random', got {caption!r}")
        if not text:
            raise ValueError("This record has no caption, so it cannot make a 'caption' example.")
        return {"prefix": TASK_PREFIXES["caption"], "suffix": text, "task": task}
    if task == "vqa":
        qa = list(record.get("qa") or [])
        if not qa:
            raise ValueError("This record has no question/answer pairs, so it cannot make a 'vqa' example.")
        pair = rng.choice(qa)
        return {"prefix": f"{TASK_PREFIXES['vqa']} {pair['question']}", "suffix": pair["answer"], "task": task}
    if task == "ocr":
        if not record.get("word"):
            raise ValueError("This scene has no written word, so it cannot make an 'ocr' example; "
                             "pick another task (or use word_prob=1.0 for OCR data).")
        return {"prefix": TASK_PREFIXES["ocr"], "suffix": record["word"], "task": task}
    objects = list(record.get("objects") or [])
    if not objects:
        raise ValueError(f"This record has no objects, so it cannot make a {task!r} example.")
    if task == "detect":
        label = rng.choice(sorted({_label(o) for o in objects}))
        chosen = _reading_order([o for o in objects if _label(o) == label])
        suffix = format_detection([o["box"] for o in chosen], [label] * len(chosen))
        return {"prefix": f"{TASK_PREFIXES['detect']} {label}", "suffix": suffix, "task": task}
    # refer: one object, named unambiguously
    names = [_name(o) for o in objects]
    unique = [o for o, n in zip(objects, names) if names.count(n) == 1]
    if not unique:
        raise ValueError("No object in this record has a unique name, so 'refer' is ambiguous here.")
    obj = rng.choice(unique)
    name = _name(obj)
    return {"prefix": f"{TASK_PREFIXES['refer']} {name}", "suffix": f"{encode_box(obj['box'])} {name}", "task": task}


def possible_tasks(record: dict[str, Any]) -> list[str]:
    """The tasks in ``TASKS`` that ``make_example`` can build from this record."""
    out = []
    for task in TASKS:
        try:
            make_example(record, task, random.Random(0))
            out.append(task)
        except ValueError:
            pass
    return out
