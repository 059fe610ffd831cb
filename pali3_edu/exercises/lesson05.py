"""Checks for lesson 05 (UL2 denoisers): the learner writes T5's span sampler.

``check_random_spans(fn)`` expects ``fn(length, noise_density, mean_span, generator)`` to return a
``(length,)`` bool tensor (True = noise) like :func:`pali3_edu.ul2.random_spans_noise_mask`:
exact noise and span counts, kept runs and noise spans interleaved starting with kept tokens and
ending with noise, and every such mask equally likely.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable

import torch

from pali3_edu.ul2 import span_counts, span_lengths

# (length, noise_density, mean_span) cases: T5-sized, dense, long spans, tiny
_CASES = [(512, 0.15, 3.0), (512, 0.5, 8.0), (600, 0.15, 64.0), (97, 0.5, 3.0), (10, 0.15, 3.0),
          (2, 0.5, 1.0)]
# 99.9 % quantile of chi-square with 8 degrees of freedom (9 equally likely masks)
_CHI2_LIMIT = 26.1


def _runs(mask: torch.Tensor) -> list[tuple[bool, int]]:
    runs: list[tuple[bool, int]] = []
    for v in mask.tolist():
        if runs and runs[-1][0] == v:
            runs[-1] = (v, runs[-1][1] + 1)
        else:
            runs.append((v, 1))
    return runs


def _show(mask: torch.Tensor) -> str:
    return "".join("x" if v else "." for v in mask.tolist()[:80]) + ("…" if len(mask) > 80 else "")


def check_random_spans(fn: Callable[..., torch.Tensor], samples: int = 1800) -> None:
    """Compare the learner's span sampler with T5's rules; raise ``AssertionError`` explaining
    the first mismatch, or print a short success line."""
    g = torch.Generator().manual_seed(0)
    for length, density, mu in _CASES:
        mask = fn(length, density, mu, g)
        where = f"fn({length}, {density}, {mu}, g)"
        assert isinstance(mask, torch.Tensor), f"{where} must return a torch.Tensor, got {type(mask)}"
        assert mask.shape == (length,), f"{where} returned shape {tuple(mask.shape)}, expected ({length},)"
        assert mask.dtype == torch.bool, (
            f"{where} returned dtype {mask.dtype}: return a bool tensor (True = noise), "
            "e.g. `mask.bool()`"
        )
        want_noise, want_spans = span_counts(length, density, mu)
        got_noise = int(mask.sum())
        assert got_noise == want_noise, (
            f"{where}: {got_noise} noise tokens, expected round({length}·{density}) = {want_noise} "
            "(clipped to [1, L-1]). The number of noise tokens is not random: only where they go is."
        )
        got_spans = len(span_lengths(mask))
        assert got_spans == want_spans, (
            f"{where}: {got_spans} noise spans, expected max(round({want_noise}/{mu}), 1) = "
            f"{want_spans}. Split the noise tokens into exactly that many spans; two adjacent spans "
            f"merge into one, so kept runs must separate them.\nmask: {_show(mask)}"
        )
        assert not mask[0], (
            f"{where}: the mask starts with noise. T5 interleaves kept, noise, kept, noise, … "
            f"starting with kept tokens.\nmask: {_show(mask)}"
        )
        assert mask[-1], (
            f"{where}: the mask ends with kept tokens. Split the kept tokens into as many runs as "
            f"there are noise spans, so the sequence always ends in a noise span.\nmask: {_show(mask)}"
        )
    # determinism: the generator is the only source of randomness
    a = fn(200, 0.15, 3.0, torch.Generator().manual_seed(123))
    b = fn(200, 0.15, 3.0, torch.Generator().manual_seed(123))
    assert torch.equal(a, b), (
        "Two calls with generators seeded alike gave different masks: draw every random number "
        "from `generator` (e.g. torch.randperm(n, generator=generator))."
    )
    # uniformity: L=8, density .5, mean span 2 → 4 noise tokens in 2 spans, 4 kept in 2 runs,
    # 3 × 3 = 9 possible masks, each with probability 1/9
    valid = {tuple([False] * a + [True] * b + [False] * (4 - a) + [True] * (4 - b))
             for a, b in itertools.product(range(1, 4), range(1, 4))}
    counts = Counter(tuple(fn(8, 0.5, 2.0, g).tolist()) for _ in range(samples))
    expected = samples / len(valid)
    missing = valid - set(counts)
    assert not missing, (
        f"Over {samples} samples of fn(8, 0.5, 2.0, g) these valid masks never appeared: "
        f"{[_show(torch.tensor(m)) for m in missing]}. Every split of the noise (and kept) "
        "tokens into spans must be possible."
    )
    chi2 = sum((counts[m] - expected) ** 2 / expected for m in valid)
    table = ", ".join(f"{_show(torch.tensor(m))}: {counts[m]}" for m in sorted(valid))
    assert chi2 < _CHI2_LIMIT, (
        f"The 9 possible masks of fn(8, 0.5, 2.0, g) are not equally likely (chi-square {chi2:.1f} "
        f"> {_CHI2_LIMIT}; each should appear ≈ {expected:.0f} times): {table}.\n"
        "Pick the span boundaries uniformly: choose (spans - 1) distinct cut points among the "
        "(n - 1) gaps between n items, e.g. with torch.randperm(n - 1, generator=g)[:spans - 1]. "
        "Drawing each span length independently (or fixing all spans at the mean) is biased."
    )
    print(f"✅ check_random_spans passed: exact counts on {len(_CASES)} settings, interleaving, "
          f"determinism, and all 9 tiny masks equally likely (chi-square {chi2:.1f} < "
          f"{_CHI2_LIMIT}).")
