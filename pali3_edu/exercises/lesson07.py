"""Checks for lesson 07 (UL2 pretraining and decoding): the learner writes nucleus (top-p)
filtering.

``check_top_p(fn)`` expects ``fn(logits, top_p)`` with ``logits`` ``(batch, vocab)`` to return a
filtered copy where the logits outside the nucleus are ``-inf``: the nucleus is the smallest set
of most likely tokens whose probabilities sum to at least ``top_p`` (the most likely token is
always kept). The reference is :func:`pali3_edu.generate.top_k_top_p_filter`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pali3_edu.generate import top_k_top_p_filter


def _describe(row: torch.Tensor, keep: torch.Tensor) -> str:
    probs = row.softmax(-1)
    order = probs.argsort(descending=True)
    parts = [f"{probs[i]:.2f}{'*' if keep[i] else ''}" for i in order[:8].tolist()]
    return "probabilities, most likely first (* = kept): " + ", ".join(parts)


def check_top_p(fn: Callable[[torch.Tensor, float], torch.Tensor]) -> None:
    """Compare the learner's top-p filter with the reference; explain the first mismatch."""
    g = torch.Generator().manual_seed(0)
    cases = [
        (torch.tensor([[2.0, 1.0, 0.5, 0.1, -1.0]]), 0.5),
        (torch.tensor([[2.0, 1.0, 0.5, 0.1, -1.0]]), 0.9),
        (torch.tensor([[0.0, 0.0, 0.0, 0.0]]), 0.5),  # uniform: exactly 2 of 4 reach 0.5
        (torch.tensor([[5.0, 0.0, 0.0, 0.0]]), 0.01),  # the top token alone is enough
        (torch.randn(6, 50, generator=g) * 2, 0.8),
        (torch.randn(3, 1000, generator=g), 0.95),
    ]
    for logits, p in cases:
        original = logits.clone()
        got = fn(logits, p)
        where = f"fn(logits {tuple(logits.shape)}, top_p={p})"
        assert torch.equal(logits, original), (
            f"{where} changed its input in place: work on a copy (logits.clone()) — generation "
            "reuses the logits."
        )
        assert isinstance(got, torch.Tensor) and got.shape == logits.shape, (
            f"{where} must return a tensor of shape {tuple(logits.shape)}, got "
            f"{getattr(got, 'shape', type(got))}"
        )
        want = top_k_top_p_filter(logits, top_p=p)
        got_keep, want_keep = torch.isfinite(got), torch.isfinite(want)
        for b in range(len(logits)):
            if torch.equal(got_keep[b], want_keep[b]):
                continue
            n_got, n_want = int(got_keep[b].sum()), int(want_keep[b].sum())
            if n_got == 0:
                hint = "you keep no token: the most likely token must always be kept"
            elif n_got == n_want - 1:
                hint = ("you keep one token too few: keep the token that makes the sum reach "
                        "top_p (drop a token only when the tokens ranked above it already "
                        "reach top_p)")
            elif n_got > n_want:
                hint = "you keep too many tokens: stop once the kept probabilities reach top_p"
            else:
                hint = "you keep too few tokens"
            raise AssertionError(
                f"{where}, row {b}: kept {n_got} tokens, expected {n_want} — {hint}.\n"
                f"  yours:    {_describe(logits[b], got_keep[b])}\n"
                f"  expected: {_describe(logits[b], want_keep[b])}"
            )
        kept_equal = torch.equal(got[want_keep], logits[want_keep])
        assert kept_equal, (
            f"{where}: the kept logits changed. Only set the dropped ones to -inf; leave the "
            "others as they were (the softmax renormalises them later)."
        )
        assert (got[~want_keep] == float("-inf")).all(), (
            f"{where}: dropped logits must be -inf (so their probability after softmax is 0), "
            "not 0 or a large negative number."
        )
    same = torch.randn(2, 30, generator=g)
    assert torch.equal(fn(same, 1.0), same), "top_p=1.0 must keep every token."
    print(f"✅ check_top_p passed on {len(cases) + 1} cases (ties, uniform rows, batches, "
          "top_p = 1).")
