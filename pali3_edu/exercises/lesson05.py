"""Checks for lesson 05 (UL2 denoisers): the learner writes T5's span sampler.

``check_random_spans(fn)`` expects ``fn(length, noise_density, mean_span, generator)`` to return a
``(length,)`` bool tensor (True = noise) like :func:`pali3_edu.ul2.random_spans_noise_mask`:
exact noise and span counts, kept runs and noise spans interleaved starting with kept tokens and
ending with noise, every random number drawn from ``generator``, and every such mask equally
likely.

The checks run in that order and stop at the first failure with an ``AssertionError`` whose
``Hint:`` names the likely cause (a truncated count, spans drawn independently, the interleaving
starting with noise, the global random generator, …); an exception inside the learner's function
is reported with a hint, and a stub that still raises ``NotImplementedError`` gets a "✏️ Your turn"
message.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch

from pali3_edu.exercises import (
    READ_THE_TRACEBACK,
    call_learner,
    fail,
    function_name,
    require_callable,
)
from pali3_edu.ul2 import span_counts

# (length, noise_density, mean_span) cases: T5-sized, dense, long spans, tiny
_CASES = [(512, 0.15, 3.0), (512, 0.5, 8.0), (600, 0.15, 64.0), (97, 0.5, 3.0), (10, 0.15, 3.0),
          (2, 0.5, 1.0)]
# 99.9 % quantile of chi-square with 8 degrees of freedom (9 equally likely masks)
_CHI2_LIMIT = 26.1


def _show(mask: torch.Tensor) -> str:
    return "".join("x" if v else "." for v in mask.tolist()[:80]) + ("…" if len(mask) > 80 else "")


def _runs(mask: torch.Tensor) -> list[tuple[bool, int]]:
    """``[(is_noise, length), …]`` of the mask's maximal runs."""
    runs: list[tuple[bool, int]] = []
    for v in mask.tolist():
        if runs and runs[-1][0] == v:
            runs[-1] = (v, runs[-1][1] + 1)
        else:
            runs.append((v, 1))
    return runs


def _exception_hint(err: Exception) -> str:
    msg = str(err)
    if "randperm" in msg or "upper bound" in msg or "negative" in msg.lower():
        return ("a split of n items into k parts draws k − 1 cut points among the n − 1 gaps: "
                "torch.randperm(n - 1, generator=generator)[:k - 1]; check n and k on the tiny "
                "cases (length 2 and 10, where a split may have a single part).")
    if "Generator" in msg or "generator" in msg:
        return "pass the generator by keyword: torch.randperm(n, generator=generator)."
    return READ_THE_TRACEBACK


def _as_mask(got: Any, call: str, length: int) -> torch.Tensor:
    if got is None:
        raise fail(f"{call} returned None.", "end your function with `return mask`.")
    if not isinstance(got, torch.Tensor):
        raise fail(f"{call} returned a {type(got).__name__}, not a tensor.",
                   "return a bool tensor: torch.tensor(mask, dtype=torch.bool).")
    if tuple(got.shape) != (length,):
        raise fail(f"{call} returned shape {tuple(got.shape)}, expected ({length},).",
                   "one entry per token: the kept runs and noise spans together add up to length.")
    if got.dtype != torch.bool:
        raise fail(f"{call} returned dtype {got.dtype}.",
                   "return a bool tensor (True = noise): mask.bool() or dtype=torch.bool. apply_noise_mask "
                   "indexes with it, and an int tensor would index positions 0 and 1 instead.")
    return got


def _check_counts(mask: torch.Tensor, call: str, length: int, density: float, mu: float) -> None:
    want_noise, want_spans = span_counts(length, density, mu)
    got_noise = int(mask.sum())
    if got_noise != want_noise:
        exact = length * density
        if got_noise == int(exact) and int(exact) != want_noise:
            hint = (f"you truncated {length}·{density} = {exact:g} to {int(exact)}; T5 rounds to the "
                    "nearest integer, round(length · noise_density), clipped to [1, length − 1].")
        else:
            hint = ("the number of noise tokens is not random, only where they go: "
                    "round(length · noise_density), clipped to [1, length − 1] (span_counts gives "
                    "it). Drawing span lengths one at a time does not hit it exactly.")
        raise fail(f"{call}: {got_noise} noise tokens, expected {want_noise}.\nmask: {_show(mask)}", hint)
    runs = _runs(mask)
    got_spans = sum(1 for is_noise, _ in runs if is_noise)
    if got_spans != want_spans:
        if got_spans < want_spans:
            hint = (f"you have {want_spans} spans but some touch and merge into one: every kept run "
                    "between two spans needs at least one token. Split the kept tokens into "
                    "non-empty parts (cut points without repeats: torch.randperm, not torch.randint).")
        else:
            hint = (f"the number of spans is fixed: max(round({want_noise} / {mu:g}), 1) = "
                    f"{want_spans} (span_counts gives it); split the noise tokens into exactly that "
                    "many non-empty spans.")
        raise fail(f"{call}: {got_spans} noise spans, expected {want_spans}.\nmask: {_show(mask)}", hint)
    if mask[0]:
        raise fail(f"{call}: the mask starts with noise.\nmask: {_show(mask)}",
                   "T5 interleaves kept, noise, kept, noise, … starting with KEPT tokens: "
                   "kept run 0, noise span 0, kept run 1, noise span 1, …")
    if not mask[-1]:
        raise fail(f"{call}: the mask ends with kept tokens.\nmask: {_show(mask)}",
                   "split the kept tokens into exactly as many runs as there are noise spans, so "
                   "that the sequence always ends with a noise span.")


def check_random_spans(fn: Callable[..., torch.Tensor], samples: int = 1800) -> None:
    """Compare the learner's span sampler with T5's rules; raise ``AssertionError`` explaining
    the first mismatch, or print a short success line."""
    require_callable(fn, "check_random_spans")
    name = function_name(fn)
    g = torch.Generator().manual_seed(0)

    def run(length: int, density: float, mu: float, generator: torch.Generator) -> torch.Tensor:
        call = f"{name}({length}, {density}, {mu}, generator)"
        return _as_mask(call_learner(fn, (length, density, mu, generator), call, _exception_hint),
                        call, length)

    for length, density, mu in _CASES:
        _check_counts(run(length, density, mu, g), f"{name}({length}, {density}, {mu}, generator)",
                      length, density, mu)

    # determinism: the generator is the only source of randomness
    state = torch.random.get_rng_state()
    a = run(200, 0.15, 3.0, torch.Generator().manual_seed(123))
    torch.manual_seed(987654)  # a different global state: a mask drawn from it changes
    b = run(200, 0.15, 3.0, torch.Generator().manual_seed(123))
    torch.random.set_rng_state(state)
    if not torch.equal(a, b):
        raise fail(f"two calls {name}(200, 0.15, 3.0, generator) with generators seeded alike gave "
                   f"different masks:\n  {_show(a)}\n  {_show(b)}",
                   "draw every random number from `generator` (torch.randperm(n, generator=generator)); "
                   "torch.randperm(n) without it, or Python's random module, use a global state.")

    # uniformity: L=8, density .5, mean span 2 → 4 noise tokens in 2 spans, 4 kept in 2 runs,
    # 3 × 3 = 9 possible masks, each with probability 1/9
    valid = {tuple([False] * a + [True] * b + [False] * (4 - a) + [True] * (4 - b))
             for a, b in itertools.product(range(1, 4), range(1, 4))}
    counts = Counter(tuple(run(8, 0.5, 2.0, g).tolist()) for _ in range(samples))
    expected = samples / len(valid)
    missing = valid - set(counts)
    if missing:
        shown = [_show(torch.tensor(m)) for m in sorted(missing)]
        seen = ", ".join(f"{_show(torch.tensor(m))}: {c}" for m, c in sorted(counts.items()))
        raise fail(f"over {samples} samples of {name}(8, 0.5, 2.0, generator), {len(missing)} of the "
                   f"9 valid masks never appeared: {shown}. Seen: {seen}.",
                   "the span lengths must be random: every split of the noise (and of the kept) "
                   "tokens into parts must be possible. Fixed lengths (all spans equal to the mean, "
                   "the remainder on the last one) never vary.")
    chi2 = sum((counts[m] - expected) ** 2 / expected for m in valid)
    if chi2 >= _CHI2_LIMIT:
        table = ", ".join(f"{_show(torch.tensor(m))}: {counts[m]}" for m in sorted(valid))
        raise fail(f"the 9 possible masks of {name}(8, 0.5, 2.0, generator) are not equally likely "
                   f"(chi-square {chi2:.1f} ≥ {_CHI2_LIMIT}; each should appear ≈ {expected:.0f} "
                   f"times): {table}.",
                   "pick the cut points uniformly: choose (k − 1) distinct cut points among the "
                   "(n − 1) gaps between n items, torch.randperm(n - 1, generator=generator)[:k - 1]. "
                   "Drawing one span length after another (each uniform in what is left) favours "
                   "a long first span.")
    print(f"✅ {name} passed: exact counts on {len(_CASES)} settings, interleaving, determinism, and "
          f"all 9 tiny masks equally likely (chi-square {chi2:.1f} < {_CHI2_LIMIT}).")


__all__ = ["check_random_spans"]
