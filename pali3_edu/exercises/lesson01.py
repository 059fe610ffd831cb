"""Checks for lesson 01 (data and tokenizer).

* :func:`check_encode_box` — the learner's ``<loc>`` encoder for a box: ``fn((y0, x0, y1, x1))``
  with values in [0, 1] must return ``"<locYYYY><locXXXX><locYYYY><locXXXX>"``, each value as bin
  ``round(v * 1023)`` written with four digits (:func:`pali3_edu.data.tasks.encode_box`).
* :func:`check_tokenizer_roundtrip` — a tokenizer gives every text back, appends EOS, and keeps
  each special token in one id.

A failed check raises an ``AssertionError`` whose ``Hint:`` names the likely cause (1024 bins
instead of 1023 steps, truncating instead of rounding, x before y, missing zero padding, …); a
stub that still raises ``NotImplementedError`` gets a "✏️ Your turn" message instead.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from typing import Any

from pali3_edu.exercises import (
    READ_THE_TRACEBACK,
    call_learner,
    fail,
    function_name,
    require_callable,
)
from pali3_edu.tokens import MODE_TOKENS, NUM_LOC_BINS, NUM_SEG_TOKENS, NUM_SENTINELS

Box = tuple[float, float, float, float]

_LOC_RE = re.compile(r"<loc(\d+)>")


def _edge_boxes() -> list[Box]:
    """Fixed cases: the ends of [0, 1], the middle, and values a hair either side of a bin edge."""
    k = 300  # values near the edge between bins k and k+1, i.e. v*1023 close to k + 0.5
    below, above = (k + 0.5) / 1023 - 1e-6, (k + 0.5) / 1023 + 1e-6
    return [
        (0.1, 0.2, 0.3, 0.4),  # first: distinct values, so an order mistake shows at once
        (0.0, 0.0, 1.0, 1.0),
        (0.5, 0.25, 0.75, 1.0),
        (0.0, 0.5, 0.5, 1.0),
        (below, above, 1.0 - above, 1.0 - below),
        (1 / 1023, 2 / 1023, 1021 / 1023, 1022 / 1023),
        (0.999, 0.0004, 0.9996, 0.0005),
    ]


def _random_boxes(n: int, seed: int) -> list[Box]:
    rng = random.Random(seed)
    boxes = []
    for _ in range(n):
        y0, y1 = sorted((rng.random(), rng.random()))
        x0, x1 = sorted((rng.random(), rng.random()))
        boxes.append((y0, x0, y1, x1))
    return boxes


def _type_hint(got: Any, want: str) -> str:
    """Why a result that is not a ``str`` is wrong, and how to fix it."""
    if got is None:
        return f"end your function with `return ...`: it should return a str like {want!r}."
    if isinstance(got, (list, tuple)):
        return (f"you returned the tokens as a {type(got).__name__}; join them into one string: "
                f"''.join(tokens) gives {want!r}.")
    if isinstance(got, bytes):
        return "return a str, not bytes (no .encode())."
    return f"return a str like {want!r}."


def _exception_hint(err: Exception) -> str:
    if isinstance(err, (TypeError, ValueError)) and "unpack" in str(err):
        return "a box is one tuple of four floats: unpack it with `y0, x0, y1, x1 = box`."
    if isinstance(err, ValueError) and "format code" in str(err):
        return "the bin must be an int before f'{b:04d}': round(v * 1023) returns one, v * 1023 does not."
    return READ_THE_TRACEBACK


def _diagnose(box: Box, got: str, want: str) -> str:
    """The most likely reason why the string ``got`` differs from ``want`` for ``box``."""
    if got.strip() != got or " " in got:
        return "write the four tokens back to back, no spaces: '<loc0102><loc0205><loc0307><loc0409>'."
    tokens = _LOC_RE.findall(got)
    if "".join(f"<loc{t}>" for t in tokens) != got:
        return "the answer must be <locNNNN> tokens only, e.g. '<loc0000><loc0511><loc1023><loc1023>'."
    if len(tokens) != 4:
        return f"a box needs exactly 4 tokens (y0, x0, y1, x1); you wrote {len(tokens)}."
    if any(len(t) != 4 for t in tokens):
        return "ids have 4 digits, zero-padded: '<loc0005>', not '<loc5>' (use f'{b:04d}')."
    bins = [int(t) for t in tokens]
    y0, x0, y1, x1 = (int(t) for t in _LOC_RE.findall(want))
    if bins == [x0, y0, x1, y1]:
        return "wrong order: PaLI writes y before x, <y0><x0><y1><x1>; yours has x first."
    if bins in ([y0, y1, x0, x1], [x0, x1, y0, y1]):
        return "wrong order: the tokens are y0, x0, y1, x1 (one corner, then the other)."
    scaled = [v * 1024 for v in box]  # the classic off-by-one: 1024 bins need 1023 steps
    with_1024 = [[f(u) for u in scaled] for f in (int, round)]
    if bins in with_1024 + [[min(b, 1023) for b in guess] for guess in with_1024]:
        return ("you used v * 1024: the 1024 tokens are bins 0 … 1023, 1023 steps apart, so a "
                "value v becomes round(v * 1023) (and 1.0 becomes <loc1023>).")
    if bins == [int(v * 1023) for v in box]:
        return ("round to the nearest bin, round(v * 1023): int() truncates, so a value just under "
                "a bin edge lands one bin too low.")
    if bins == [-int(-v * 1023 // 1) for v in box]:
        return "round to the nearest bin, round(v * 1023): math.ceil rounds every value up."
    if any(b > 1023 or b < 0 for b in bins):
        return "bins must stay in 0 … 1023."
    return "each coordinate v in [0, 1] becomes bin round(v * 1023), written <loc%04d>."


def check_encode_box(fn: Callable[[Box], str], n_random: int = 200, seed: int = 0) -> None:
    """Compare the learner's ``fn(box) -> "<locYYYY><locXXXX><locYYYY><locXXXX>"`` with ours.

    ``box`` is ``(y0, x0, y1, x1)`` with values normalised to [0, 1]. Raises ``AssertionError``
    with an explanation at the first mismatch; prints one line when every case agrees.
    """
    from pali3_edu.data.tasks import (
        encode_box,  # the reference (imported here: keeps this light)
    )

    require_callable(fn, "check_encode_box")
    name = function_name(fn)
    boxes = _edge_boxes() + _random_boxes(n_random, seed)
    for box in boxes:
        want = encode_box(box)
        shown = tuple(round(v, 6) for v in box)
        call = f"{name}({shown})"
        got = call_learner(fn, (box,), call, _exception_hint)
        if not isinstance(got, str):
            raise fail(f"{call} returned {got!r} (a {type(got).__name__}), expected {want!r}.",
                       _type_hint(got, want))
        if got != want:
            raise fail(f"{call} returned {got!r}, expected {want!r}.", _diagnose(box, got, want))
    print(f"✅ {name} agrees with the reference on {len(boxes)} boxes (edge cases + random).")


def check_tokenizer_roundtrip(tok: Any, texts: Sequence[str] | None = None) -> None:
    """Check that ``tok`` gives texts back, appends EOS and keeps each special token in one id.

    ``tok`` is a :class:`pali3_edu.tokenizer.Tokenizer` (or anything with the same methods:
    ``encode(text, add_eos=True)``, ``decode(ids)``, ``token_to_id``, ``eos_id``, ``vocab_size``).
    """
    if texts is None:
        texts = [
            "caption en",
            "a large red circle left of a small blue square",
            "answer en what color is the circle?",
            ("<loc0001><loc0002><loc0003><loc0004> circle ; "
            "<loc0100><loc0200><loc0300><loc0400> square"),
            "[NLU] the <extra_id_0> is red <extra_id_1>",
            "a star mask <seg000><seg127>",
        ]
    for text in texts:
        ids = list(tok.encode(text))
        if not ids or ids[-1] != tok.eos_id:
            raise fail(f"encode({text!r}) gave {ids}: it should end with EOS (id {tok.eos_id}).",
                       "append the end-of-sequence id to every encoded text (add_eos=True); the "
                       "decoder learns to stop by predicting it.")
        back = tok.decode(ids[:-1])
        if back != text:
            raise fail(f"round trip failed: {text!r} -> {ids} -> {back!r}.",
                       "decode(encode(text)) must give the text back: look for spaces added or "
                       "lost around special tokens, or pieces the SentencePiece model maps to <unk>.")
    specials = ["<loc0000>", f"<loc{NUM_LOC_BINS - 1:04d}>", "<seg000>",
                f"<seg{NUM_SEG_TOKENS - 1:03d}>", *MODE_TOKENS.values(),
                "<extra_id_0>", f"<extra_id_{NUM_SENTINELS - 1}>"]
    for s in specials:
        ids = list(tok.encode(s, add_eos=False))
        if len(ids) != 1:
            raise fail(f"{s} became {len(ids)} ids {ids}, not one.",
                       "special tokens must be matched before SentencePiece splits the text; "
                       "otherwise '<loc0001>' is spelled out in pieces and the model cannot "
                       "predict a box in one step.")
    top = tok.token_to_id("<extra_id_0>")
    if top != tok.vocab_size - 1:
        raise fail(f"<extra_id_0> has id {top}, but the highest id is {tok.vocab_size - 1}.",
                   "T5's convention: the sentinels are the last ids, <extra_id_0> the highest, "
                   "counting down (so a T5 checkpoint's sentinels keep their ids).")
    print(f"✅ {len(texts)} texts round-trip; the {len(specials)} special tokens are one id each.")


__all__ = ["check_encode_box", "check_tokenizer_roundtrip"]
