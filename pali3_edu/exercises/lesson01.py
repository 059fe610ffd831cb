"""Checks for lesson 01 (data and tokenizer).

* :func:`check_encode_box` — the learner's ``<loc>`` encoder for a box.
* :func:`check_tokenizer_roundtrip` — a tokenizer gives every text back and keeps each special
  token in one id.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from typing import Any

from pali3_edu.tokens import MODE_TOKENS, NUM_LOC_BINS, NUM_SEG_TOKENS, NUM_SENTINELS

Box = tuple[float, float, float, float]

_LOC_RE = re.compile(r"<loc(\d+)>")


def _edge_boxes() -> list[Box]:
    """Fixed cases: the ends of [0, 1], the middle, and values a hair either side of a bin edge."""
    k = 300  # values near the edge between bins k and k+1, i.e. v*1023 close to k + 0.5
    below, above = (k + 0.5) / 1023 - 1e-6, (k + 0.5) / 1023 + 1e-6
    return [
        (0.0, 0.0, 1.0, 1.0),
        (0.5, 0.25, 0.75, 1.0),
        (0.0, 0.5, 0.5, 1.0),
        (below, above, 1.0 - above, 1.0 - below),
        (1 / 1023, 2 / 1023, 1021 / 1023, 1022 / 1023),
        (0.1, 0.2, 0.3, 0.4),
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


def _diagnose(box: Box, got: Any, want: str) -> str:
    """Explain the most likely reason why ``got`` differs from ``want`` for ``box``."""
    if not isinstance(got, str):
        kind = type(got).__name__
        return f"your function returned a {kind}; it should return a str like {want!r}"
    shown = tuple(round(v, 6) for v in box)
    header = f"for box (y0, x0, y1, x1) = {shown} you returned {got!r}, expected {want!r}.\n"
    if got.strip() != got or " " in got:
        return header + "Write the four tokens back to back, no spaces: '<loc0001><loc0002>…'."
    tokens = _LOC_RE.findall(got)
    if "".join(f"<loc{t}>" for t in tokens) != got:
        return header + "The answer must be <locNNNN> tokens only, e.g. '<loc0000><loc0511>…'."
    if len(tokens) != 4:
        return header + f"A box needs exactly 4 tokens (y0, x0, y1, x1); you wrote {len(tokens)}."
    if any(len(t) != 4 for t in tokens):
        return header + "Ids must be 4 digits, zero-padded: '<loc0005>', not '<loc5>' (f'{b:04d}')."
    bins = [int(t) for t in tokens]
    y0, x0, y1, x1 = (int(t) for t in _LOC_RE.findall(want))
    if bins == [x0, y0, x1, y1]:
        return header + "Wrong order: PaLI uses y before x, <y0><x0><y1><x1>; yours has x first."
    if bins in ([y0, y1, x0, x1], [x0, x1, y0, y1]):
        return header + "Wrong order: the tokens are y0, x0, y1, x1 (one corner, then the other)."
    scaled = [v * 1024 for v in box]  # the classic off-by-one: 1024 bins need 1023 steps
    with_1024 = [[f(u) for u in scaled] for f in (int, round)]
    if bins in with_1024 + [[min(b, 1023) for b in guess] for guess in with_1024]:
        return header + (
            "You used 1024 bins (v * 1024): the 1024 tokens are bins 0 … 1023, "
            "so a value v becomes round(v * 1023)."
        )
    if bins == [int(v * 1023) for v in box]:
        return header + (
            "Round to the nearest bin, round(v * 1023): int() truncates, so a value just under "
            "a bin edge lands one bin too low."
        )
    if any(b > 1023 or b < 0 for b in bins):
        return header + "Bins must stay in 0 … 1023."
    return header + "Each coordinate v in [0, 1] becomes bin round(v * 1023), written <loc%04d>."


def check_encode_box(fn: Callable[[Box], str], n_random: int = 200, seed: int = 0) -> None:
    """Compare the learner's ``fn(box) -> "<locYYYY><locXXXX><locYYYY><locXXXX>"`` with ours.

    ``box`` is ``(y0, x0, y1, x1)`` with values normalised to [0, 1]. Raises ``AssertionError``
    with an explanation at the first mismatch; prints one line when every case agrees.
    """
    from pali3_edu.data.tasks import encode_box  # the reference (imported here: keeps this light)

    boxes = _edge_boxes() + _random_boxes(n_random, seed)
    for box in boxes:
        want = encode_box(box)
        try:
            got = fn(box)
        except Exception as e:  # show the learner what went wrong, on which input
            raise AssertionError(f"your function raised {type(e).__name__}: {e} for {box}") from e
        if got != want:
            raise AssertionError(_diagnose(box, got, want))
    print(f"✅ encode_box agrees with the reference on {len(boxes)} boxes (edge cases + random).")


def check_tokenizer_roundtrip(tok: Any, texts: Sequence[str] | None = None) -> None:
    """Check that ``tok`` gives texts back, appends EOS and keeps each special token in one id.

    ``tok`` is a :class:`pali3_edu.tokenizer.Tokenizer` (or anything with the same methods).
    """
    if texts is None:
        texts = [
            "caption en",
            "a large red circle left of a small blue square",
            "answer en what color is the circle?",
            "<loc0001><loc0002><loc0003><loc0004> circle ; "
            "<loc0100><loc0200><loc0300><loc0400> square",
            "[NLU] the <extra_id_0> is red <extra_id_1>",
            "a star mask <seg000><seg127>",
        ]
    for text in texts:
        ids = tok.encode(text)
        assert ids and ids[-1] == tok.eos_id, (
            f"encode({text!r}) should end with EOS (id {tok.eos_id}), got {ids}"
        )
        back = tok.decode(ids[:-1])
        assert back == text, f"round trip failed: {text!r} -> {ids} -> {back!r}"
    specials = ["<loc0000>", f"<loc{NUM_LOC_BINS - 1:04d}>", "<seg000>",
                f"<seg{NUM_SEG_TOKENS - 1:03d}>", *MODE_TOKENS.values(),
                "<extra_id_0>", f"<extra_id_{NUM_SENTINELS - 1}>"]
    for s in specials:
        ids = tok.encode(s, add_eos=False)
        assert len(ids) == 1, f"{s} should be one token, got {len(ids)} ids: {ids}"
    assert tok.token_to_id("<extra_id_0>") == tok.vocab_size - 1, (
        "<extra_id_0> should be the highest id (T5 convention)"
    )
    print(f"✅ {len(texts)} texts round-trip; the {len(specials)} special tokens are one id each.")
