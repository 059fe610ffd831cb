"""Checks for lesson 06 (encoder-decoder): relative position buckets and the causal mask.

Each ``check_…`` runs the learner's function and the reference from :mod:`pali3_edu.encdec` on
the same inputs and raises an ``AssertionError`` that says what differs and what to look at.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pali3_edu.encdec import causal_mask, relative_position_bucket


def check_relative_position_bucket(fn: Callable[..., torch.Tensor]) -> None:
    """``fn(relative_position, bidirectional, num_buckets, max_distance) -> LongTensor``."""
    rel = torch.arange(-300, 301)
    for bidirectional in (True, False):
        for num_buckets, max_distance in ((32, 128), (8, 20)):
            kind = "encoder (bidirectional)" if bidirectional else "decoder (causal)"
            got = fn(rel.clone(), bidirectional, num_buckets, max_distance)
            want = relative_position_bucket(rel, bidirectional, num_buckets, max_distance)
            if not isinstance(got, torch.Tensor) or got.shape != want.shape:
                raise AssertionError(
                    f"Return a tensor with the shape of relative_position {tuple(want.shape)}, "
                    f"got {type(got).__name__} {getattr(got, 'shape', '')}."
                )
            if got.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
                raise AssertionError("Bucket ids are integers: convert with .long() (it truncates).")
            bad = (got != want).nonzero().flatten()
            if bad.numel():
                r = rel[bad]
                hint = _bucket_hint(r, bidirectional, num_buckets, max_distance)
                examples = ", ".join(
                    f"rel={int(rel[i])}: got {int(got[i])}, want {int(want[i])}" for i in bad[:4]
                )
                raise AssertionError(
                    f"{kind}, {num_buckets} buckets, max_distance {max_distance}: {bad.numel()} "
                    f"wrong buckets, e.g. {examples}.\nHint: {hint}"
                )
    print("✅ relative_position_bucket matches the reference (encoder and decoder, two sizes).")


def _bucket_hint(rel: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int) -> str:
    n = num_buckets // 2 if bidirectional else num_buckets
    max_exact = n // 2
    dist = rel.abs() if bidirectional else (-rel).clamp(min=0)
    if not bidirectional and (rel > 0).all():
        return ("in the decoder, keys to the right (rel > 0) never get attended; "
                "T5 maps them to distance 0: use max(-rel, 0).")
    if bidirectional and (rel > 0).all():
        return (f"keys to the right (rel > 0) use the upper half of the buckets: add "
                f"num_buckets // 2 = {n} and use |rel| as the distance.")
    if (dist < max_exact).all():
        return f"distances below max_exact = {max_exact} are their own bucket (bucket = distance)."
    if (dist >= max_distance).all():
        return (f"far distances (≥ max_distance = {max_distance}) all share the last bucket: "
                "clamp to (buckets per direction) − 1.")
    return (f"log-spaced part: max_exact + floor(log(d / max_exact) / log(max_distance / max_exact) "
            f"× (n − max_exact)) with n = {n} buckets for this direction, max_exact = {max_exact}.")


def check_causal_mask(fn: Callable[[int, int], torch.Tensor]) -> None:
    """``fn(query_length, key_length) -> BoolTensor (query_length, key_length)``, True = may attend.

    The queries are the last ``query_length`` of ``key_length`` positions (a KV-cache step
    has 1 query and all previous keys)."""
    for q, k in ((1, 1), (5, 5), (1, 7), (3, 8), (6, 6)):
        got = fn(q, k)
        want = causal_mask(q, k)
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != (q, k):
            raise AssertionError(
                f"fn({q}, {k}) must return a ({q}, {k}) tensor, got {getattr(got, 'shape', type(got))}."
            )
        got = got.bool() if got.dtype != torch.bool else got
        if not torch.equal(got, want):
            diagonal = torch.arange(k)[None, :] == torch.arange(q)[:, None] + (k - q)
            if torch.equal(got, want & ~diagonal):
                raise AssertionError(f"fn({q}, {k}): a token must also attend to itself (the diagonal).")
            if torch.equal(got, ~want):
                raise AssertionError(f"fn({q}, {k}) is inverted: True must mean 'may attend'.")
            if q < k and torch.equal(got, torch.ones(q, k, dtype=torch.bool).tril()):
                raise AssertionError(
                    f"fn({q}, {k}): with a cached past the queries are the LAST {q} positions; "
                    f"shift the diagonal by key_length − query_length = {k - q} (tril(diagonal=...))."
                )
            what = "lets queries see FUTURE keys" if (got & ~want).any() else "hides keys it should see"
            raise AssertionError(
                f"fn({q}, {k}) {what}.\nGot:\n{got.int()}\nWant:\n{want.int()}"
            )
    print("✅ causal_mask matches the reference (including KV-cache steps with a cached past).")


__all__ = ["check_causal_mask", "check_relative_position_bucket"]
