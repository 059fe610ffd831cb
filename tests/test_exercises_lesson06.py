"""Lesson 06's exercise checks: the correct bucket functions and causal masks pass, and each
usual mistake (subtle and gross) gets the hint that names its real cause."""

from __future__ import annotations

import math

import pytest
import torch

from pali3_edu.encdec import causal_mask, relative_position_bucket
from pali3_edu.exercises import ExerciseNotDone
from pali3_edu.exercises.lesson06 import check_causal_mask, check_relative_position_bucket

# --------------------------------------------------------------------------------------------
# Exercise 1: relative position buckets
# --------------------------------------------------------------------------------------------


def buckets(rel, bidirectional=True, num_buckets=32, max_distance=128, *, sign=1, offset_when="gt",
            halve=True, use_round=False, clamp=True, no_offset=False, plain_log=False,
            float_out=False):
    """A learner's bucket function written out, with switches for the usual mistakes."""
    offset = torch.zeros_like(rel)
    n = num_buckets
    if bidirectional:
        if halve:
            n //= 2
        side = {"gt": rel > 0, "ge": rel >= 0, "lt": rel < 0}[offset_when]
        if not no_offset:
            offset = side.long() * n
        d = rel.abs()
    else:
        d = (-sign * rel).clamp(min=0)
    max_exact = n // 2
    is_exact = d < max_exact
    if plain_log:
        scaled = torch.log(d.float().clamp(min=1)) / math.log(max_distance) * (n - max_exact)
    else:
        scaled = torch.log(d.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact) * (n - max_exact)
    far = max_exact + (scaled.round() if use_round else scaled).long()
    if clamp:
        far = far.clamp(max=n - 1)
    out = offset + torch.where(is_exact, d, far)
    return out.float() if float_out else out


def bucket_correct(rel, bidirectional=True, num_buckets=32, max_distance=128):
    return buckets(rel, bidirectional, num_buckets, max_distance)


def bucket_decoder_sign_flip(rel, bidirectional=True, num_buckets=32, max_distance=128):
    return buckets(rel, bidirectional, num_buckets, max_distance, sign=-1)


def bucket_encoder_side_flip(rel, bidirectional=True, num_buckets=32, max_distance=128):
    return buckets(rel, bidirectional, num_buckets, max_distance, offset_when="lt")


def bucket_query_minus_key(rel, bidirectional=True, num_buckets=32, max_distance=128):  # both flipped
    return relative_position_bucket(-rel, bidirectional, num_buckets, max_distance)


def bucket_offset_at_zero(rel, bidirectional=True, num_buckets=32, max_distance=128):  # subtle
    return buckets(rel, bidirectional, num_buckets, max_distance, offset_when="ge")


def bucket_no_offset(rel, bidirectional=True, num_buckets=32, max_distance=128):
    return buckets(rel, bidirectional, num_buckets, max_distance, no_offset=True)


def bucket_not_halved(rel, bidirectional=True, num_buckets=32, max_distance=128):
    return buckets(rel, bidirectional, num_buckets, max_distance, halve=False)


def bucket_rounded(rel, bidirectional=True, num_buckets=32, max_distance=128):  # subtle
    return buckets(rel, bidirectional, num_buckets, max_distance, use_round=True)


def bucket_unclamped(rel, bidirectional=True, num_buckets=32, max_distance=128):
    return buckets(rel, bidirectional, num_buckets, max_distance, clamp=False)


def bucket_plain_log(rel, bidirectional=True, num_buckets=32, max_distance=128):
    return buckets(rel, bidirectional, num_buckets, max_distance, plain_log=True)


def bucket_float(rel, bidirectional=True, num_buckets=32, max_distance=128):
    return buckets(rel, bidirectional, num_buckets, max_distance, float_out=True)


def bucket_decoder_abs(rel, bidirectional=True, num_buckets=32, max_distance=128):
    return relative_position_bucket(rel.abs().neg(), False, num_buckets, max_distance) if not bidirectional \
        else relative_position_bucket(rel, True, num_buckets, max_distance)


def bucket_zeros(rel, bidirectional=True, num_buckets=32, max_distance=128):  # gross
    return torch.zeros_like(rel)


def bucket_flat_list(rel, bidirectional=True, num_buckets=32, max_distance=128):
    return [int(b) for b in relative_position_bucket(rel.flatten(), bidirectional, num_buckets, max_distance)]


def bucket_1d_only(rel, bidirectional=True, num_buckets=32, max_distance=128):  # flattens its input
    return relative_position_bucket(rel.flatten(), bidirectional, num_buckets, max_distance)


def bucket_none(rel, bidirectional=True, num_buckets=32, max_distance=128):
    relative_position_bucket(rel, bidirectional, num_buckets, max_distance)


def bucket_math_log(rel, bidirectional=True, num_buckets=32, max_distance=128):  # math.log on a tensor
    d = rel.abs()
    return torch.where(d < 8, d, 8 + int(math.log(d / 8) / math.log(16) * 8))


def bucket_stub(rel, bidirectional=True, num_buckets=32, max_distance=128):
    raise NotImplementedError("✏️ Your turn")


@pytest.mark.parametrize("fn", [bucket_correct, relative_position_bucket])
def test_check_bucket_accepts_the_solution(fn, capsys):
    check_relative_position_bucket(fn)
    assert "✅" in capsys.readouterr().out


@pytest.mark.parametrize(
    "fn, hint",
    [
        (bucket_decoder_sign_flip, "sign flip in the decoder"),
        (bucket_encoder_side_flip, "sign flip in the encoder"),
        (bucket_query_minus_key, "sign flip: rel is key − query"),
        (bucket_offset_at_zero, "rel = 0 \\(the query itself\\) belongs to the lower half"),
        (bucket_no_offset, "upper half"),
        (bucket_not_halved, "each direction gets HALF the buckets"),
        (bucket_rounded, "rounded DOWN"),
        (bucket_unclamped, "must all share the last bucket"),
        (bucket_plain_log, "measures the distance from max_exact"),
        (bucket_float, "convert the log-spaced part with .long\\(\\)"),
        (bucket_decoder_abs, "not \\|rel\\|"),
        (bucket_zeros, "wrong buckets"),
        (bucket_flat_list, "returned a list, not a tensor"),
        (bucket_1d_only, "2-D \\(query, key\\) grid"),
        (bucket_none, "returned None"),
    ],
)
def test_check_bucket_names_the_mistake(fn, hint):
    with pytest.raises(AssertionError, match=hint) as info:
        check_relative_position_bucket(fn)
    assert "\nHint: " in str(info.value)


def test_a_sign_flip_is_not_blamed_on_the_log_spaced_part():
    with pytest.raises(AssertionError) as info:
        check_relative_position_bucket(bucket_decoder_sign_flip)
    assert "log-spaced" not in str(info.value)


def test_bucket_crash_gets_a_hint_and_keeps_its_cause():
    with pytest.raises(AssertionError, match="math.log .* work on ONE number") as info:
        check_relative_position_bucket(bucket_math_log)
    assert isinstance(info.value.__cause__, ValueError)  # the learner's traceback is kept


def test_bucket_stub_says_your_turn():
    with pytest.raises(ExerciseNotDone, match="Your turn: bucket_stub"):
        check_relative_position_bucket(bucket_stub)


def test_bucket_mistakes_are_told_apart():
    from pali3_edu.exercises import lesson06

    want = [relative_position_bucket(lesson06._REL, *case) for case in lesson06._BUCKET_CASES]
    values = [[lesson06._buckets(lesson06._REL, *case, **knobs) for case in lesson06._BUCKET_CASES]
              for knobs, _ in lesson06._BUCKET_MISTAKES]
    assert all(torch.equal(lesson06._buckets(lesson06._REL, *case), w)
               for case, w in zip(lesson06._BUCKET_CASES, want))  # the knobs' defaults are the reference
    for i, v in enumerate(values):
        assert not all(torch.equal(a, b) for a, b in zip(v, want)), lesson06._BUCKET_MISTAKES[i][1]
        for j in range(i):
            assert not all(torch.equal(a, b) for a, b in zip(v, values[j])), (i, j)


# --------------------------------------------------------------------------------------------
# Exercise 2: the causal mask
# --------------------------------------------------------------------------------------------


def mask_correct(q, k):
    return torch.ones(q, k, dtype=torch.bool).tril(diagonal=k - q)


def mask_positions(q, k):
    return torch.arange(k)[None, :] <= torch.arange(q)[:, None] + (k - q)


def mask_int(q, k):  # 0/1 integers are accepted
    return torch.ones(q, k, dtype=torch.long).tril(diagonal=k - q)


def mask_additive(q, k):  # gross for this exercise: the model's additive form
    return torch.zeros(q, k).masked_fill(~causal_mask(q, k), float("-inf"))


def mask_additive_finfo(q, k):
    return torch.zeros(q, k).masked_fill(~causal_mask(q, k), torch.finfo(torch.float32).min)


def mask_strict(q, k):  # subtle
    return torch.ones(q, k, dtype=torch.bool).tril(diagonal=k - q - 1)


def mask_inverted(q, k):
    return ~causal_mask(q, k)


def mask_upper(q, k):
    return torch.ones(q, k, dtype=torch.bool).triu(diagonal=k - q)


def mask_no_offset(q, k):  # subtle: right without a cache
    return torch.ones(q, k, dtype=torch.bool).tril()


def mask_negative_offset(q, k):
    return torch.ones(q, k, dtype=torch.bool).tril(diagonal=q - k)


def mask_all(q, k):  # gross
    return torch.ones(q, k, dtype=torch.bool)


def mask_nothing(q, k):
    return torch.zeros(q, k, dtype=torch.bool)


def mask_transposed(q, k):
    return causal_mask(q, k).T


def mask_none(q, k):
    causal_mask(q, k)


def mask_list(q, k):
    return causal_mask(q, k).tolist()


def mask_broadcast_bug(q, k):
    return torch.arange(k) <= torch.arange(q) + (k - q)


def mask_stub(q, k):
    raise NotImplementedError("✏️ Your turn")


@pytest.mark.parametrize("fn", [mask_correct, mask_positions, mask_int, causal_mask])
def test_check_causal_mask_accepts_the_solution(fn, capsys):
    check_causal_mask(fn)
    assert "✅" in capsys.readouterr().out


@pytest.mark.parametrize(
    "fn, hint",
    [
        (mask_additive, "return a BOOLEAN mask"),
        (mask_additive_finfo, "return a BOOLEAN mask"),
        (mask_strict, "a token must also attend to itself"),
        (mask_inverted, "inverted: True must mean 'may attend'"),
        (mask_upper, "you kept the upper triangle"),
        (mask_no_offset, "LAST"),
        (mask_negative_offset, "the diagonal moved the wrong way"),
        (mask_all, "FUTURE"),
        (mask_nothing, "nothing is allowed"),
        (mask_transposed, "\\(keys, queries\\)"),
        (mask_none, "returned None"),
        (mask_list, "returned a list, not a tensor"),
        (mask_broadcast_bug, "the query positions are a column"),
    ],
)
def test_check_causal_mask_names_the_mistake(fn, hint):
    with pytest.raises(AssertionError, match=hint) as info:
        check_causal_mask(fn)
    assert "\nHint: " in str(info.value)


def test_an_additive_mask_is_not_told_to_attend_to_itself():
    with pytest.raises(AssertionError) as info:
        check_causal_mask(mask_additive)
    assert "attend to itself" not in str(info.value)


def test_mask_stub_says_your_turn():
    with pytest.raises(ExerciseNotDone, match="Your turn: mask_stub"):
        check_causal_mask(mask_stub)


def test_checks_want_the_function_not_its_result():
    with pytest.raises(TypeError, match="without calling it"):
        check_causal_mask(causal_mask(3, 3))
    with pytest.raises(TypeError, match="without calling it"):
        check_relative_position_bucket(relative_position_bucket(torch.arange(3)))


def test_mask_mistakes_are_told_apart():
    from pali3_edu.exercises import lesson06

    cases = lesson06._MASK_CASES
    want = [causal_mask(q, k) for q, k in cases]
    values = [[m(q, k) for q, k in cases] for m, _ in lesson06._MASK_MISTAKES]
    for i, v in enumerate(values):
        assert not all(torch.equal(a, b) for a, b in zip(v, want)), lesson06._MASK_MISTAKES[i][1]
        for j in range(i):
            assert not all(torch.equal(a, b) for a, b in zip(v, values[j])), (i, j)
