"""Checks for lesson 06 (the encoder-decoder): relative position buckets and the causal mask.

* :func:`check_relative_position_bucket` — the learner's ``relative_position_bucket(relative_position,
  bidirectional, num_buckets, max_distance)``: bucket ids (``long``, same shape) equal to
  :func:`pali3_edu.encdec.relative_position_bucket` for the encoder and the decoder, two sizes.
* :func:`check_causal_mask` — the learner's ``causal_mask(query_length, key_length)``: a boolean
  ``(query_length, key_length)`` mask, ``True`` where a query may attend, the queries being the
  LAST ``query_length`` positions (a KV-cache step), as :func:`pali3_edu.encdec.causal_mask`.

Each check runs the learner's function on all its cases first. When the results differ it looks
for the usual mistake that gives exactly the learner's results on every case (a sign flip, the
offset on the wrong side, a missing clamp, a strict triangle, an additive mask, …) and names it
in the ``Hint:``; otherwise it says where the wrong values are. A stub that still raises
``NotImplementedError`` gets a "✏️ Your turn" message; any other exception is reported with a
hint and chained below.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from pali3_edu.encdec import causal_mask, relative_position_bucket
from pali3_edu.exercises import READ_THE_TRACEBACK, call_learner, fail, function_name, require_callable

__all__ = ["check_causal_mask", "check_relative_position_bucket"]

# ---------------------------------------------------------------------------------------------
# relative position buckets
# ---------------------------------------------------------------------------------------------

#: (bidirectional, num_buckets, max_distance): T5's sizes and a small table, encoder and decoder.
_BUCKET_CASES = [(True, 32, 128), (False, 32, 128), (True, 8, 20), (False, 8, 20)]
_REL = torch.arange(-300, 301)


def _kind(bidirectional: bool) -> str:
    return "encoder (bidirectional)" if bidirectional else "decoder (causal)"


def _buckets(
    rel: torch.Tensor,
    bidirectional: bool,
    num_buckets: int,
    max_distance: int,
    *,
    decoder_distance: str = "-rel",
    right_side: str = ">",
    halve: bool = True,
    max_exact_from_all: bool = False,
    rounding: str = "floor",
    clamp: str = "direction",
    log_of: str = "ratio",
) -> torch.Tensor:
    """The reference, with knobs that reproduce the usual mistakes (defaults: the right answer)."""
    n = num_buckets
    offset = torch.zeros_like(rel)
    if bidirectional:
        if halve:
            n = num_buckets // 2
        right = rel > 0 if right_side == ">" else rel >= 0 if right_side == ">=" else rel < 0
        offset = right.long() * n if right_side != "none" else offset
        distance = rel.abs()
    else:
        distance = {"-rel": (-rel).clamp(min=0), "rel": rel.clamp(min=0), "abs": rel.abs()}[decoder_distance]
    max_exact = (num_buckets // 2) if max_exact_from_all else n // 2
    is_exact = distance < max_exact
    if log_of == "ratio":
        scaled = torch.log(distance.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact)
    else:  # log(d) / log(max_distance): forgot to measure from max_exact
        scaled = torch.log(distance.float().clamp(min=1)) / math.log(max_distance)
    scaled = scaled * (n - max_exact)
    steps = scaled.round().long() if rounding == "round" else scaled.long()
    far = max_exact + steps
    if clamp == "direction":
        far = far.clamp(max=n - 1)
    elif clamp == "all":
        far = far.clamp(max=num_buckets - 1)
    return offset + torch.where(is_exact, distance, far)


#: The usual mistakes: (the knobs that reproduce them, the hint that names them).
_BUCKET_MISTAKES: list[tuple[dict[str, Any], str]] = [
    ({"decoder_distance": "rel"},
     "sign flip in the decoder: the keys a decoder query can see are on its LEFT, where rel = key − "
     "query is NEGATIVE. The distance is max(−rel, 0), not max(rel, 0); keys to the right (rel > 0) "
     "get distance 0."),
    ({"decoder_distance": "abs"},
     "in the decoder the distance is max(−rel, 0), not |rel|: keys to the right are masked anyway "
     "and all fall into bucket 0."),
    ({"right_side": "<"},
     "sign flip in the encoder: the upper half of the buckets (offset num_buckets // 2) is for keys "
     "to the RIGHT of the query, rel = key − query > 0; keys on the left (rel ≤ 0) use the lower half."),
    ({"right_side": ">="},
     "rel = 0 (the query itself) belongs to the lower half: add the offset only when rel > 0, not rel ≥ 0."),
    ({"right_side": "none"},
     "keys to the right (rel > 0) use the upper half of the buckets: add num_buckets // 2 when rel > 0, "
     "and use |rel| as the distance."),
    ({"halve": False},
     "in the encoder each direction gets HALF the buckets: num_buckets // 2 for the left, the same "
     "number (offset by it) for the right. Halve num_buckets before computing max_exact and the "
     "log-spaced part."),
    ({"max_exact_from_all": True},
     "in the encoder, max_exact is half of the buckets of ONE direction: halve num_buckets first, "
     "then max_exact = num_buckets // 2 (a quarter of the original)."),
    ({"rounding": "round"},
     "the log-spaced bucket is rounded DOWN: .long() (or floor) on the non-negative scaled log, not round()."),
    ({"clamp": "none"},
     "far distances (≥ max_distance) must all share the last bucket of their direction: "
     ".clamp(max=n − 1) with n the number of buckets per direction."),
    ({"clamp": "all"},
     "clamp to the last bucket of the DIRECTION, n − 1 with n = num_buckets // 2 in the encoder, not "
     "to num_buckets − 1 (that is the right-hand half's range)."),
    ({"log_of": "plain"},
     "the log-spaced part measures the distance from max_exact: log(d / max_exact) / "
     "log(max_distance / max_exact), times (n − max_exact), plus max_exact."),
]


def _bucket_exception_hint(err: Exception) -> str:
    msg = str(err)
    if "only one element tensors" in msg or "converted to Python scalars" in msg:
        return ("math.log (and math.floor, int(), float()) work on ONE number: use the tensor "
                "versions on the whole distance tensor, torch.log(distance.float()), .long().")
    if "log" in msg and ("Long" in msg or "integer" in msg.lower()):
        return "torch.log needs a float tensor: distance.float()."
    if "where" in msg and ("dtype" in msg.lower() or "expected scalar type" in msg):
        return ("torch.where needs the two branches in one dtype: convert the log-spaced branch to "
                "integers with .long() before torch.where.")
    if "must match the size" in msg:
        return "keep every intermediate the shape of relative_position (no indexing that drops entries)."
    return READ_THE_TRACEBACK


def _fallback_bucket_hint(rel: torch.Tensor, bad: torch.Tensor, bidirectional: bool, num_buckets: int,
                          max_distance: int) -> str:
    """Where the wrong buckets are, when no known mistake fits."""
    n = num_buckets // 2 if bidirectional else num_buckets
    max_exact = n // 2
    r = rel[bad]
    distance = r.abs() if bidirectional else (-r).clamp(min=0)
    if not bidirectional and (r > 0).all():
        return ("only keys to the right (rel > 0) are wrong: in the decoder they get distance 0, "
                "max(−rel, 0), hence bucket 0.")
    if bidirectional and (r > 0).all():
        return f"only keys to the right (rel > 0) are wrong: they use the upper half, offset {n}, and |rel|."
    if bidirectional and (r <= 0).all():
        return "only keys on the left (rel ≤ 0) are wrong: they use the lower half (no offset) and |rel|."
    if (distance < max_exact).all():
        return f"only near distances are wrong: below max_exact = {max_exact} the bucket is the distance itself."
    if (distance >= max_distance).all():
        return (f"only far distances are wrong: everything at or beyond max_distance = {max_distance} "
                f"shares the last bucket of its direction, n − 1 = {n - 1}.")
    if (distance >= max_exact).all():
        return (f"only the log-spaced part is wrong: max_exact + floor(log(d / max_exact) / "
                f"log(max_distance / max_exact) × (n − max_exact)) with n = {n} buckets per direction, "
                f"max_exact = {max_exact}, then clamp to n − 1.")
    return ("wrong buckets on both sides and at several distances: start from the distance (|rel| in "
            "the encoder, max(−rel, 0) in the decoder), then the exact branch, then the log-spaced one.")


def check_relative_position_bucket(fn: Callable[..., Any]) -> None:
    """``fn(relative_position, bidirectional, num_buckets, max_distance) -> LongTensor``, compared
    with :func:`pali3_edu.encdec.relative_position_bucket` for the encoder and the decoder."""
    require_callable(fn, "check_relative_position_bucket")
    name = function_name(fn)
    results = []
    for bidirectional, num_buckets, max_distance in _BUCKET_CASES:
        call = (f"{name}(relative_position (-300..300), bidirectional={bidirectional}, "
                f"num_buckets={num_buckets}, max_distance={max_distance})")
        got = call_learner(fn, (_REL.clone(), bidirectional, num_buckets, max_distance), call,
                           _bucket_exception_hint)
        if got is None:
            raise fail(f"{call} returned None.", "end your function with `return <the bucket ids>`.")
        if not isinstance(got, torch.Tensor):
            raise fail(f"{call} returned a {type(got).__name__}, not a tensor.",
                       "work with torch operations on relative_position (torch.where, torch.log) and "
                       "return a tensor of its shape.")
        if got.shape != _REL.shape:
            raise fail(f"{call} returned shape {tuple(got.shape)}, expected {tuple(_REL.shape)} (the "
                       "shape of relative_position).", "one bucket id per relative position.")
        if got.is_floating_point():
            raise fail(f"{call} returned {got.dtype} values.",
                       "bucket ids index a table: convert the log-spaced part with .long() (it rounds "
                       "down the non-negative values).")
        results.append(got.long())

    # a 2-D input: the (query, key) grid the model passes
    pos = torch.arange(12)
    grid = pos[None, :] - pos[:, None]
    call = f"{name}(relative_position (12, 12), bidirectional=True, num_buckets=32, max_distance=128)"
    got_grid = call_learner(fn, (grid.clone(), True, 32, 128), call, _bucket_exception_hint)

    wants = [relative_position_bucket(_REL, *case) for case in _BUCKET_CASES]
    wrong = [i for i, (g, w) in enumerate(zip(results, wants)) if not torch.equal(g, w)]
    if wrong:
        for knobs, hint in _BUCKET_MISTAKES:
            variants = [_buckets(_REL, *case, **knobs) for case in _BUCKET_CASES]
            if all(torch.equal(g, v) for g, v in zip(results, variants)):
                i = wrong[0]
                bidirectional, num_buckets, max_distance = _BUCKET_CASES[i]
                raise fail(f"{_kind(bidirectional)}, {num_buckets} buckets, max_distance {max_distance}: "
                           f"{int((results[i] != wants[i]).sum())} wrong buckets, "
                           f"{_examples(results[i], wants[i])}.", hint)
        mirrored = [relative_position_bucket(-_REL, *case) for case in _BUCKET_CASES]
        if all(torch.equal(g, m) for g, m in zip(results, mirrored)):
            i = wrong[0]
            raise fail(f"{_kind(_BUCKET_CASES[i][0])}: every bucket is the one of −rel.",
                       "sign flip: rel is key − query (negative for keys on the LEFT). You computed the "
                       "buckets of query − key.")
        i = wrong[0]
        bidirectional, num_buckets, max_distance = _BUCKET_CASES[i]
        bad = (results[i] != wants[i]).nonzero().flatten()
        raise fail(f"{_kind(bidirectional)}, {num_buckets} buckets, max_distance {max_distance}: "
                   f"{bad.numel()} wrong buckets, {_examples(results[i], wants[i])}.",
                   _fallback_bucket_hint(_REL, bad, bidirectional, num_buckets, max_distance))
    want_grid = relative_position_bucket(grid, True, 32, 128)
    if not isinstance(got_grid, torch.Tensor) or got_grid.shape != want_grid.shape or not torch.equal(
            got_grid.long(), want_grid):
        raise fail(f"{call} is right on a 1-D input but not on the 2-D (query, key) grid.",
                   "use element-wise operations only (no flatten, no indexing by position): the model "
                   "passes a (queries, keys) tensor and expects the same shape back.")
    print(f"✅ {name} matches the reference (encoder and decoder, two sizes, 1-D and 2-D inputs).")


def _examples(got: torch.Tensor, want: torch.Tensor) -> str:
    bad = (got != want).nonzero().flatten()
    return "e.g. " + ", ".join(f"rel={int(_REL[i])}: got {int(got[i])}, want {int(want[i])}" for i in bad[:4])


# ---------------------------------------------------------------------------------------------
# the causal mask
# ---------------------------------------------------------------------------------------------

_MASK_CASES = [(1, 1), (5, 5), (1, 7), (3, 8), (6, 6)]


def _positions(q: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Absolute positions of the queries (the last q of k) and of the keys, ready to compare."""
    return torch.arange(q)[:, None] + (k - q), torch.arange(k)[None, :]


#: The usual mistakes: (the mask they give for (q, k), the hint that names them).
_MASK_MISTAKES: list[tuple[Callable[[int, int], torch.Tensor], str]] = [
    (lambda q, k: (lambda qp, kp: kp < qp)(*_positions(q, k)),
     "a token must also attend to itself (the diagonal): allow key j when j ≤ i, not j < i."),
    (lambda q, k: (lambda qp, kp: kp > qp)(*_positions(q, k)),
     "inverted: True must mean 'may attend'. You allowed exactly the future keys."),
    (lambda q, k: (lambda qp, kp: kp >= qp)(*_positions(q, k)),
     "you kept the upper triangle: each query sees itself and the keys AFTER it. A query may see the "
     "keys at or BEFORE its position (the lower triangle, tril)."),
    (lambda q, k: torch.ones(q, k, dtype=torch.bool).tril(),
     "with a cached past the queries are the LAST query_length of key_length positions: shift the "
     "diagonal by key_length − query_length (tril(diagonal=key_length - query_length))."),
    (lambda q, k: torch.ones(q, k, dtype=torch.bool).tril(diagonal=q - k),
     "the diagonal moved the wrong way: the queries are the LAST positions, so they see MORE keys, "
     "tril(diagonal=key_length - query_length) (a positive shift)."),
    (lambda q, k: torch.ones(q, k, dtype=torch.bool),
     "every key is allowed: that is the encoder's mask, which lets queries see FUTURE keys. The "
     "decoder allows key j for the query at position i only when j ≤ i."),
    (lambda q, k: torch.zeros(q, k, dtype=torch.bool),
     "nothing is allowed: each query needs at least itself and the keys before it."),
]


def _mask_exception_hint(err: Exception) -> str:
    msg = str(err)
    if "must match the size" in msg:
        return ("the query positions are a column, torch.arange(query_length)[:, None] + offset, and "
                "the key positions a row, torch.arange(key_length)[None, :]: comparing them broadcasts "
                "to (query_length, key_length).")
    return READ_THE_TRACEBACK


def _as_mask(got: Any, call: str, q: int, k: int) -> torch.Tensor:
    if got is None:
        raise fail(f"{call} returned None.", "end your function with `return <the mask>`.")
    if not isinstance(got, torch.Tensor):
        raise fail(f"{call} returned a {type(got).__name__}, not a tensor.",
                   "build the mask with torch operations (torch.arange, comparisons, torch.tril).")
    if tuple(got.shape) == (k, q) and q != k:
        raise fail(f"{call} returned shape {tuple(got.shape)}: (keys, queries).",
                   f"rows are queries and columns keys: ({q}, {k}).")
    if got.ndim == 1:
        raise fail(f"{call} returned shape {tuple(got.shape)}, expected (query_length, key_length) = {(q, k)}.",
                   "the query positions are a column, torch.arange(query_length)[:, None] + offset, and the "
                   "key positions a row, torch.arange(key_length)[None, :]: comparing them broadcasts to "
                   "(query_length, key_length).")
    if tuple(got.shape) != (q, k):
        raise fail(f"{call} returned shape {tuple(got.shape)}, expected (query_length, key_length) = {(q, k)}.",
                   "one entry per (query, key) pair.")
    if got.is_floating_point() and (torch.isinf(got).any() or (got < 0).any()):
        raise fail(f"{call} returned an additive {got.dtype} mask (0 where allowed, a large negative "
                   "number or −inf where not).",
                   "return a BOOLEAN mask, True where the query may attend (the model turns it into "
                   "the additive bias later, with masked_fill). Compare positions: k_pos <= q_pos.")
    if got.dtype != torch.bool:
        if not ((got == 0) | (got == 1)).all():
            raise fail(f"{call} returned {got.dtype} values other than 0 and 1.",
                       "return a boolean mask: True where the query may attend, False elsewhere.")
        got = got.bool()
    return got


def check_causal_mask(fn: Callable[[int, int], Any]) -> None:
    """``fn(query_length, key_length) -> BoolTensor (query_length, key_length)``, True = may attend.

    The queries are the last ``query_length`` of ``key_length`` positions (a KV-cache step
    has 1 query and all previous keys)."""
    require_callable(fn, "check_causal_mask")
    name = function_name(fn)
    results = []
    for q, k in _MASK_CASES:
        call = f"{name}({q}, {k})"
        results.append(_as_mask(call_learner(fn, (q, k), call, _mask_exception_hint), call, q, k))
    wants = [causal_mask(q, k) for q, k in _MASK_CASES]
    wrong = [i for i, (g, w) in enumerate(zip(results, wants)) if not torch.equal(g, w)]
    if not wrong:
        print(f"✅ {name} matches the reference ({len(_MASK_CASES)} cases, including KV-cache steps "
              "with a cached past).")
        return
    i = wrong[0]
    q, k = _MASK_CASES[i]
    call = f"{name}({q}, {k})"
    for mistake, hint in _MASK_MISTAKES:
        if all(torch.equal(g, mistake(qq, kk)) for g, (qq, kk) in zip(results, _MASK_CASES)):
            raise fail(f"{call} differs from the causal mask.", hint)
    got, want = results[i], wants[i]
    what = "lets queries see FUTURE keys" if (got & ~want).any() else "hides keys it should see"
    raise fail(f"{call} {what}.\nGot:\n{got.int()}\nWant:\n{want.int()}",
               f"the queries sit at positions key_length − query_length + i = {k - q} + i; query i may "
               "see key j when j ≤ that position.")
