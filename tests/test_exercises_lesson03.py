"""Lesson 03's exercise check: the correct sigmoid losses pass, and each usual mistake (subtle
and gross) gets the hint that names its real cause."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pali3_edu.exercises import ExerciseNotDone
from pali3_edu.exercises.lesson03 import check_sigmoid_loss


def _labels(x):
    return 2 * torch.eye(len(x), dtype=x.dtype) - 1


def loss_correct(x, y, tp, b):
    logits = tp.exp() * x @ y.T + b
    return -F.logsigmoid(_labels(x) * logits).sum() / len(x)


def loss_bce(x, y, tp, b):  # the same loss with 0/1 targets
    logits = tp.exp() * x @ y.T + b
    return F.binary_cross_entropy_with_logits(logits, torch.eye(len(x), dtype=x.dtype), reduction="sum") / len(x)


def loss_transposed(x, y, tp, b):  # text → image: the same sum
    logits = tp.exp() * y @ x.T + b
    return -F.logsigmoid(_labels(x) * logits).sum() / len(x)


def loss_mean_over_pairs(x, y, tp, b):
    return -F.logsigmoid(_labels(x) * (tp.exp() * x @ y.T + b)).mean()


def loss_no_division(x, y, tp, b):
    return -F.logsigmoid(_labels(x) * (tp.exp() * x @ y.T + b)).sum()


def loss_t_prime_as_t(x, y, tp, b):  # subtle
    return -F.logsigmoid(_labels(x) * (tp * x @ y.T + b)).sum() / len(x)


def loss_no_bias(x, y, tp, b):
    return -F.logsigmoid(_labels(x) * (tp.exp() * x @ y.T)).sum() / len(x)


def loss_bias_scaled(x, y, tp, b):  # subtle
    return -F.logsigmoid(_labels(x) * (tp.exp() * (x @ y.T + b))).sum() / len(x)


def loss_flipped_labels(x, y, tp, b):
    return -F.logsigmoid(-_labels(x) * (tp.exp() * x @ y.T + b)).sum() / len(x)


def loss_positives_only(x, y, tp, b):
    return -F.logsigmoid(tp.exp() * (x * y).sum(-1) + b).sum() / len(x)


def loss_negatives_only(x, y, tp, b):  # subtle: the diagonal left out
    logits = tp.exp() * x @ y.T + b
    off = 1 - torch.eye(len(x), dtype=x.dtype)
    return (F.softplus(logits) * off).sum() / len(x)


def loss_softmax(x, y, tp, b):  # gross: CLIP's loss
    logits = tp.exp() * x @ y.T
    target = torch.arange(len(x))
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def loss_01_labels(x, y, tp, b):
    return -F.logsigmoid(torch.eye(len(x), dtype=x.dtype) * (tp.exp() * x @ y.T + b)).sum() / len(x)


def loss_wrong_sign(x, y, tp, b):
    return F.logsigmoid(_labels(x) * (tp.exp() * x @ y.T + b)).sum() / len(x)


def loss_sigmoid_not_log(x, y, tp, b):
    return -torch.sigmoid(_labels(x) * (tp.exp() * x @ y.T + b)).sum() / len(x)


def loss_per_pair(x, y, tp, b):
    return -F.logsigmoid(_labels(x) * (tp.exp() * x @ y.T + b)) / len(x)


def loss_per_row(x, y, tp, b):
    return -F.logsigmoid(_labels(x) * (tp.exp() * x @ y.T + b)).sum(1)


def loss_item(x, y, tp, b):
    return loss_correct(x, y, tp, b).item()


def loss_none(x, y, tp, b):
    loss_correct(x, y, tp, b)


def loss_detached(x, y, tp, b):
    return loss_correct(x.detach(), y.detach(), tp.detach(), b.detach())


def loss_math_exp(x, y, tp, b):  # subtle: the right value, no gradient for t'
    return -F.logsigmoid(_labels(x) * (math.exp(tp.item()) * x @ y.T + b)).sum() / len(x)


def loss_no_transpose(x, y, tp, b):
    return -F.logsigmoid(_labels(x) * (tp.exp() * x @ y + b)).sum() / len(x)


def loss_float32_targets(x, y, tp, b):  # BCE with float32 targets on float64 logits
    logits = tp.exp() * x @ y.T + b
    return F.binary_cross_entropy_with_logits(logits, torch.eye(len(x)), reduction="sum") / len(x)


def loss_stub(x, y, tp, b):
    raise NotImplementedError("✏️ Your turn: write loss_stub — then run the check cell below.")


@pytest.mark.parametrize("fn", [loss_correct, loss_bce, loss_transposed])
def test_check_sigmoid_loss_accepts_the_solution(fn, capsys):
    check_sigmoid_loss(fn)
    assert "✅" in capsys.readouterr().out


@pytest.mark.parametrize(
    "fn, hint",
    [
        (loss_mean_over_pairs, "divided by B²"),
        (loss_no_division, "forgot to divide by the batch size"),
        (loss_t_prime_as_t, "t' directly as the temperature"),
        (loss_no_bias, "bias b is missing"),
        (loss_bias_scaled, "multiplied the bias by the temperature"),
        (loss_flipped_labels, "labels are flipped"),
        (loss_positives_only, "only the positive pairs"),
        (loss_negatives_only, "only the negative pairs"),
        (loss_softmax, "softmax \\(CLIP\\) loss"),
        (loss_01_labels, "labels 0/1"),
        (loss_wrong_sign, "wrong sign"),
        (loss_sigmoid_not_log, "σ instead of log σ"),
        (loss_per_pair, "loss of every pair"),
        (loss_per_row, "one loss per row"),
        (loss_item, "returned a float, not a tensor"),
        (loss_none, "returned None"),
        (loss_detached, "cut off from the autograd graph"),
        (loss_math_exp, "no gradient reaches t_prime"),
        (loss_no_transpose, "image_emb @ text_emb.T"),
    ],
)
def test_check_sigmoid_loss_names_the_mistake(fn, hint):
    with pytest.raises(AssertionError, match=hint) as info:
        check_sigmoid_loss(fn)
    assert "\nHint: " in str(info.value)


def test_mixed_dtypes_are_explained_or_accepted(capsys):
    """float32 targets on float64 logits: either PyTorch promotes (then it is right) or it
    raises, and the hint names the dtype."""
    try:
        check_sigmoid_loss(loss_float32_targets)
    except AssertionError as err:
        assert "dtype" in str(err)
    else:
        assert "✅" in capsys.readouterr().out


def test_stub_says_your_turn():
    with pytest.raises(ExerciseNotDone, match="Your turn: loss_stub"):
        check_sigmoid_loss(loss_stub)


def test_crash_keeps_its_cause():
    with pytest.raises(AssertionError) as info:
        check_sigmoid_loss(loss_no_transpose)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_check_wants_the_function_not_its_result():
    with pytest.raises(TypeError, match="without calling it"):
        check_sigmoid_loss(0.5)


def test_the_cases_tell_the_mistakes_apart():
    """On the check's cases no recognised mistake equals the right loss everywhere, and no two
    of them agree everywhere (else a hint could name the wrong cause)."""
    from pali3_edu.exercises import lesson03
    from pali3_edu.siglip import sigmoid_loss

    inputs = [(*lesson03._inputs(b, d, seed), tp, bias) for b, d, seed, tp, bias in lesson03._CASES]
    want = [sigmoid_loss(*args).item() for args in inputs]
    values = [[m(*args) for args in inputs] for m, _ in lesson03._MISTAKES]
    for i, v in enumerate(values):
        assert not all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(v, want)), lesson03._MISTAKES[i][1]
        for j in range(i):
            assert not all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(v, values[j])), (i, j)
