"""Checks for lesson 07 (UL2 pretraining and decoding): the learner writes nucleus (top-p)
filtering.

``check_top_p(fn)`` expects ``fn(logits, top_p)`` with ``logits`` ``(batch, vocab)`` to return a
filtered copy where the logits outside the nucleus are ``-inf``: the nucleus is the smallest set
of most likely tokens whose probabilities sum to at least ``top_p`` (the most likely token is
always kept). The reference is :func:`pali3_edu.generate.top_k_top_p_filter`.

The check runs the learner's function on every case first. When the results differ from the
reference it looks for the usual mistake that gives exactly the learner's results on every case
(the mass *including* a token compared with ``top_p``, a mask left in sorted order, dropped
logits set to 0, an ascending sort, …) and names it in the ``Hint:``; otherwise it describes the
first row that differs. An exception inside the learner's function is reported with a hint, and a
stub that still raises ``NotImplementedError`` gets a "✏️ Your turn" message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from pali3_edu.exercises import (
    READ_THE_TRACEBACK,
    call_learner,
    fail,
    function_name,
    require_callable,
)
from pali3_edu.generate import top_k_top_p_filter

NEG_INF = float("-inf")


def _cases() -> list[tuple[Tensor, float]]:
    g = torch.Generator().manual_seed(0)
    return [
        (torch.tensor([[2.0, 1.0, 0.5, 0.1, -1.0]]), 0.5),
        (torch.tensor([[2.0, 1.0, 0.5, 0.1, -1.0]]), 0.9),
        (torch.tensor([[-1.0, 0.5, 2.0, 0.1, 1.0]]), 0.9),  # not sorted: the order must come back
        (torch.tensor([[0.0, 0.0, 0.0, 0.0]]), 0.5),  # uniform: exactly 2 of 4 reach 0.5
        (torch.tensor([[0.0, 0.0, 5.0, 0.0]]), 0.01),  # the top token alone is enough
        (torch.randn(6, 50, generator=g) * 2, 0.8),
        (torch.randn(3, 1000, generator=g), 0.95),
        (torch.randn(2, 30, generator=g), 1.0),  # top_p = 1 keeps everything
    ]


def _sorted_parts(logits: Tensor, descending: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """(sorted probabilities, the sort order, cumulative sums)."""
    probs, order = logits.softmax(-1).sort(dim=-1, descending=descending)
    return probs, order, probs.cumsum(-1)


def _drop_in_vocab_order(drop_sorted: Tensor, order: Tensor) -> Tensor:
    return drop_sorted.scatter(-1, order, drop_sorted)


def _with_drop(logits: Tensor, drop: Tensor, value: float = NEG_INF) -> Tensor:
    return logits.masked_fill(drop, value)


def _reference_drop(logits: Tensor, p: float) -> Tensor:
    return ~torch.isfinite(top_k_top_p_filter(logits, top_p=p))


def _m_cumsum(logits: Tensor, p: float) -> Tensor:  # compares the mass INCLUDING the token
    _probs, order, cum = _sorted_parts(logits)
    return _with_drop(logits, _drop_in_vocab_order(cum >= p, order))


def _m_cumsum_strict(logits: Tensor, p: float) -> Tensor:
    _probs, order, cum = _sorted_parts(logits)
    return _with_drop(logits, _drop_in_vocab_order(cum > p, order))


def _m_cumsum_keep_top(logits: Tensor, p: float) -> Tensor:  # cumsum, the top token forced in
    _probs, order, cum = _sorted_parts(logits)
    drop_sorted = cum >= p
    drop_sorted[..., 0] = False
    return _with_drop(logits, _drop_in_vocab_order(drop_sorted, order))


def _m_strict(logits: Tensor, p: float) -> Tensor:  # mass above > p: keeps one more at a tie
    probs, order, cum = _sorted_parts(logits)
    return _with_drop(logits, _drop_in_vocab_order(cum - probs > p, order))


def _m_no_scatter(logits: Tensor, p: float) -> Tensor:  # the sorted-order mask on the vocab order
    probs, _order, cum = _sorted_parts(logits)
    return _with_drop(logits, cum - probs >= p)


def _m_gather(logits: Tensor, p: float) -> Tensor:  # the inverse permutation taken the wrong way
    probs, order, cum = _sorted_parts(logits)
    return _with_drop(logits, (cum - probs >= p).gather(-1, order))


def _m_sorted_output(logits: Tensor, p: float) -> Tensor:  # filtered, but left in sorted order
    values, _order = logits.sort(dim=-1, descending=True)
    probs = values.softmax(-1)
    return values.masked_fill(probs.cumsum(-1) - probs >= p, NEG_INF)


def _m_ascending(logits: Tensor, p: float) -> Tensor:
    probs, order, cum = _sorted_parts(logits, descending=False)
    return _with_drop(logits, _drop_in_vocab_order(cum - probs >= p, order))


def _m_zero(logits: Tensor, p: float) -> Tensor:
    return _with_drop(logits, _reference_drop(logits, p), 0.0)


def _m_large_negative(value: float) -> Callable[[Tensor, float], Tensor]:
    return lambda logits, p: _with_drop(logits, _reference_drop(logits, p), value)


def _m_top_k(logits: Tensor, p: float) -> Tensor:  # keeps round(p · vocab) tokens
    k = max(1, int(p * logits.shape[-1]))
    kth = logits.topk(k, dim=-1).values[..., -1:]
    return _with_drop(logits, logits < kth)


def _m_own_prob(logits: Tensor, p: float) -> Tensor:  # a token's own probability against top_p
    return _with_drop(logits, logits.softmax(-1) < p)


def _m_probs(logits: Tensor, p: float) -> Tensor:  # returns probabilities instead of logits
    return _with_drop(logits.softmax(-1), _reference_drop(logits, p), 0.0)


_CUMSUM = ("you drop the token that makes the sum reach top_p (you compare cumsum, the mass "
           "INCLUDING each token, with top_p) — with a confident model that drops even the most "
           "likely token. Drop a token only when the mass ranked ABOVE it, cumsum − p, already "
           "reaches top_p.")

#: The usual mistakes: (what they return for (logits, top_p), the hint that names them).
_MISTAKES: list[tuple[Callable[[Tensor, float], Tensor], str]] = [
    (_m_zero, ("you set the dropped logits to 0. A logit of 0 is still a likely token (softmax "
              "turns it into exp(0) / Σ exp > 0, more than any negative logit): set them to "
              "float('-inf'), whose probability is exactly 0.")),
    (_m_large_negative(-1e9), ("you set the dropped logits to a large negative number; use "
                              "float('-inf'): its probability is exactly 0 in any dtype (−1e9 "
                              "overflows fp16 and is not 'impossible' for the sampler).")),
    (_m_large_negative(-1e4), ("you set the dropped logits to −1e4; use float('-inf'): its "
                              "probability is exactly 0.")),
    (_m_cumsum, _CUMSUM),
    (_m_cumsum_strict, _CUMSUM),
    (_m_cumsum_keep_top, ("you keep one token too few: the token that makes the sum reach top_p "
                         "belongs to the nucleus. You compare cumsum (the mass INCLUDING each "
                         "token) with top_p; drop a token only when the mass ranked ABOVE it, "
                         "cumsum − p, already reaches top_p (then the most likely token is kept "
                         "without a special case).")),
    (_m_strict, ("at an exact tie you keep one token too many: the nucleus is complete as soon as "
                "the mass ranked above a token EQUALS top_p, so drop when cumsum − p >= top_p (not >).")),
    (_m_no_scatter, ("you keep the right NUMBER of tokens but the wrong ones: the mask was computed "
                    "in sorted order and applied to the logits in vocabulary order. Scatter it back "
                    "first: drop = drop_sorted.scatter(-1, order, drop_sorted).")),
    (_m_gather, ("you keep the right NUMBER of tokens but the wrong ones: gather(-1, order) applies "
                "the sort permutation again instead of undoing it. Use "
                "drop_sorted.scatter(-1, order, drop_sorted) to put the mask back in vocabulary order.")),
    (_m_sorted_output, ("you return the logits in SORTED order: the filter must keep each logit at "
                       "its vocabulary position (position i is token id i). Compute the mask on the "
                       "sorted values, scatter it back with `order`, then fill the original logits.")),
    (_m_ascending, ("you sorted in ascending order, so the nucleus is built from the LEAST likely "
                   "tokens: sort with descending=True.")),
    (_m_top_k, ("you keep a fixed number of tokens (top_p × vocab): that is top-k. Top-p keeps "
               "however many of the most likely tokens it takes for their probabilities to reach top_p.")),
    (_m_own_prob, ("you compare each token's OWN probability with top_p; top-p compares the summed "
                  "probability of the most likely tokens (a cumulative sum over the sorted "
                  "probabilities).")),
    (_m_probs, ("you return probabilities; return the filtered LOGITS (the sampler applies the "
               "softmax after filtering), with −inf where a token is dropped.")),
]


def _exception_hint(err: Exception) -> str:
    msg = str(err)
    if "scatter" in msg or ("index" in msg and "dtype" in msg):
        return ("scatter needs the mask and the order with the same shape, and the order as int64 "
                "indices: drop_sorted.scatter(-1, order, drop_sorted).")
    if "masked_fill" in msg and "bool" in msg:
        return "masked_fill needs a bool mask: compare, e.g. mass_above >= top_p, gives one."
    return READ_THE_TRACEBACK


def _describe(row: Tensor, keep: Tensor) -> str:
    probs = row.softmax(-1)
    order = probs.argsort(descending=True)
    parts = [f"{probs[i]:.2f}{'*' if keep[i] else ''}" for i in order[:8].tolist()]
    return "probabilities, most likely first (* = kept): " + ", ".join(parts)


def _first_row(got: Tensor, want: Tensor) -> int:
    return next(b for b in range(len(got)) if not torch.equal(got[b], want[b]))


def _compare_row(got: Tensor, logits: Tensor, want: Tensor, b: int) -> str:
    """The kept tokens of row ``b``, yours and the reference's, most likely first."""
    got_keep = (got[b] == logits[b]) & torch.isfinite(got[b])
    return (f"\n  yours:    {_describe(logits[b], got_keep)}"
            f"\n  expected: {_describe(logits[b], torch.isfinite(want[b]))}")


def _first_difference(got: Tensor, logits: Tensor, want: Tensor, where: str) -> AssertionError:
    """Describe the first row where ``got`` and the reference ``want`` differ."""
    kept_same = got == logits
    for b in range(len(logits)):
        if torch.equal(got[b], want[b]):
            continue
        got_keep, want_keep = kept_same[b] & torch.isfinite(got[b]), torch.isfinite(want[b])
        odd = ~kept_same[b] & (got[b] != NEG_INF)
        yours = _compare_row(got, logits, want, b)
        if odd.any():
            i = int(odd.nonzero()[0])
            return fail(f"{where}, row {b}: position {i} holds {got[b, i].item():.4g}; the logit was "
                        f"{logits[b, i].item():.4g}.",
                        "a kept logit stays exactly as it was, a dropped one becomes float('-inf'); "
                        "nothing else changes (no softmax, no re-sorting, no scaling).")
        n_got, n_want = int(got_keep.sum()), int(want_keep.sum())
        if n_got == 0:
            hint = "you keep no token: the most likely token is always kept. " + _CUMSUM
        elif n_got == n_want:
            hint = ("you keep the right number of tokens but not the most likely ones: is the mask "
                    "put back in vocabulary order (scatter with the sort order)?")
        elif n_got == n_want - 1:
            hint = ("you keep one token too few: keep the token that makes the sum reach top_p "
                    "(drop a token only when the tokens ranked above it already reach top_p).")
        elif n_got > n_want:
            hint = "you keep too many tokens: stop once the kept probabilities reach top_p."
        else:
            hint = "you keep too few tokens: keep adding the most likely tokens until their sum reaches top_p."
        return fail(f"{where}, row {b}: kept {n_got} tokens, expected {n_want}.{yours}", hint)
    return fail(f"{where}: the result differs from the reference.", "compare with top_k_top_p_filter.")


def check_top_p(fn: Callable[[Tensor, float], Tensor]) -> None:
    """Compare the learner's top-p filter with the reference; explain the first mismatch."""
    require_callable(fn, "check_top_p")
    name = function_name(fn)
    cases = _cases()
    results: list[Tensor] = []
    for logits, p in cases:
        where = f"{name}(logits {tuple(logits.shape)}, top_p={p})"
        original = logits.clone()
        got: Any = call_learner(fn, (logits, p), where, _exception_hint)
        if not torch.equal(logits, original):
            raise fail(f"{where} changed its input logits in place.",
                       "work on a copy: masked_fill (without the _) and clone() return new tensors; "
                       "the generation loop uses the logits again.")
        if got is None:
            raise fail(f"{where} returned None.", "end your function with `return filtered_logits`.")
        if not isinstance(got, Tensor) or got.shape != logits.shape:
            raise fail(f"{where} returned {getattr(got, 'shape', type(got).__name__)}, expected a "
                       f"tensor of shape {tuple(logits.shape)}.",
                       "return the logits themselves, filtered: same shape, −inf where a token is dropped.")
        if got.isnan().any():
            raise fail(f"{where} returned NaN values.",
                       "NaN usually comes from arithmetic on −inf (−inf − −inf, 0 · −inf): fill "
                       "with masked_fill instead of multiplying by a mask.")
        results.append(got.detach().float())
    wants = [top_k_top_p_filter(logits, top_p=p) for logits, p in cases]
    for (logits, p), got, want in zip(cases, results, wants):
        if torch.equal(got, want):
            continue
        where = f"{name}(logits {tuple(logits.shape)}, top_p={p})"
        for mistake, why in _MISTAKES:
            if all(torch.equal(r, mistake(lg, pp).float()) for r, (lg, pp) in zip(results, cases)):
                b = _first_row(got, want)
                raise fail(f"{where}, row {b}: the result differs from the reference."
                           f"{_compare_row(got, logits, want, b)}", why)
        raise _first_difference(got, logits, want, where)
    print(f"✅ {name} passed on {len(cases)} cases (ties, uniform rows, unsorted logits, batches, "
          "top_p = 1).")


__all__ = ["check_top_p"]
