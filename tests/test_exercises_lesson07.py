"""Lesson 07's exercise check (nucleus / top-p filtering): right filters pass, each usual mistake
gets the hint that names its real cause, exceptions are reported (not raw), a stub gets
"your turn"."""

from __future__ import annotations

import ast
import inspect

import pytest
import torch

from pali3_edu.exercises import ExerciseNotDone, lesson07
from pali3_edu.exercises.lesson07 import check_top_p
from pali3_edu.generate import top_k_top_p_filter


def _parts(logits, descending=True):
    probs, order = logits.softmax(dim=-1).sort(dim=-1, descending=descending)
    return probs, order, probs.cumsum(dim=-1)


def top_p_correct(logits, top_p):  # the lesson's solution
    probs, order, cum = _parts(logits)
    drop_sorted = cum - probs >= top_p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def top_p_loop(logits, top_p):  # also right: one row at a time, a Python loop
    out = logits.clone()
    for b in range(len(logits)):
        probs = logits[b].softmax(-1)
        total = 0.0
        keep = set()
        for i in probs.argsort(descending=True).tolist():
            if total >= top_p:
                break
            keep.add(i)
            total += probs[i].item()
        for i in range(logits.shape[1]):
            if i not in keep:
                out[b, i] = float("-inf")
    return out


def top_p_reference(logits, top_p):
    return top_k_top_p_filter(logits, top_p=top_p)


def top_p_zero(logits, top_p):
    probs, order, cum = _parts(logits)
    drop_sorted = cum - probs >= top_p
    return logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), 0.0)


def top_p_minus_1e9(logits, top_p):
    probs, order, cum = _parts(logits)
    drop_sorted = cum - probs >= top_p
    return logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), -1e9)


def top_p_cumsum(logits, top_p):
    _probs, order, cum = _parts(logits)
    drop_sorted = cum >= top_p
    return logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))


def top_p_cumsum_keep_top(logits, top_p):
    _probs, order, cum = _parts(logits)
    drop_sorted = cum >= top_p
    drop_sorted[:, 0] = False
    return logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))


def top_p_strict(logits, top_p):
    probs, order, cum = _parts(logits)
    drop_sorted = cum - probs > top_p
    return logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))


def top_p_no_scatter(logits, top_p):
    probs, _order, cum = _parts(logits)
    return logits.masked_fill(cum - probs >= top_p, float("-inf"))


def top_p_gather(logits, top_p):
    probs, order, cum = _parts(logits)
    drop_sorted = cum - probs >= top_p
    return logits.masked_fill(drop_sorted.gather(-1, order), float("-inf"))


def top_p_sorted_output(logits, top_p):
    values, _ = logits.sort(dim=-1, descending=True)
    probs = values.softmax(-1)
    return values.masked_fill(probs.cumsum(-1) - probs >= top_p, float("-inf"))


def top_p_ascending(logits, top_p):
    probs, order, cum = _parts(logits, descending=False)
    drop_sorted = cum - probs >= top_p
    return logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))


def top_p_as_top_k(logits, top_p):
    k = max(1, int(top_p * logits.shape[-1]))
    kth = logits.topk(k, dim=-1).values[:, -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_own_probability(logits, top_p):
    return logits.masked_fill(logits.softmax(-1) < top_p, float("-inf"))


def top_p_probabilities(logits, top_p):
    probs, order, cum = _parts(logits)
    drop_sorted = cum - probs >= top_p
    return logits.softmax(-1).masked_fill(drop_sorted.scatter(-1, order, drop_sorted), 0.0)


def top_p_in_place(logits, top_p):
    probs, order, cum = _parts(logits)
    drop_sorted = cum - probs >= top_p
    logits[drop_sorted.scatter(-1, order, drop_sorted)] = float("-inf")
    return logits


def top_p_multiply(logits, top_p):  # keep * logits + drop * (-inf) gives NaN (0 · −inf)
    probs, order, cum = _parts(logits)
    drop_sorted = cum - probs >= top_p
    drop = drop_sorted.scatter(-1, order, drop_sorted).float()
    return logits * (1 - drop) + drop * float("-inf")


def top_p_nothing(logits, top_p):
    return logits.clone()


def top_p_none(logits, top_p):
    top_p_correct(logits, top_p)


def top_p_crash(logits, top_p):
    probs, order = logits.softmax(-1).sort(descending=True)
    drop_sorted = probs.cumsum(-1) - probs >= top_p
    return logits.masked_fill(drop_sorted.scatter(-1, order.float(), drop_sorted), float("-inf"))


def top_p_stub(logits, top_p):
    raise NotImplementedError("✏️ Your turn: write top_p_stub — then run the check cell below.")


@pytest.mark.parametrize("fn", [top_p_correct, top_p_loop, top_p_reference])
def test_check_top_p_accepts_right_filters(fn, capsys):
    check_top_p(fn)
    assert "✅" in capsys.readouterr().out


@pytest.mark.parametrize(
    "fn, hint",
    [
        (top_p_zero, "you set the dropped logits to 0"),
        (top_p_minus_1e9, "large negative number"),
        (top_p_cumsum, "INCLUDING each token"),
        (top_p_cumsum_keep_top, "one token too few"),
        (top_p_strict, "exact tie"),
        (top_p_no_scatter, "right NUMBER of tokens but the wrong ones: the mask was computed in sorted order"),
        (top_p_gather, "gather\\(-1, order\\) applies the sort permutation again"),
        (top_p_sorted_output, "SORTED order"),
        (top_p_ascending, "ascending order"),
        (top_p_as_top_k, "that is top-k"),
        (top_p_own_probability, "OWN probability"),
        (top_p_probabilities, "you return probabilities"),
        (top_p_in_place, "work on a copy"),
        (top_p_multiply, "masked_fill instead of multiplying"),
        (top_p_nothing, "you keep too many tokens"),
        (top_p_none, "end your function with `return"),
    ],
)
def test_check_top_p_names_the_mistake(fn, hint):
    with pytest.raises(AssertionError, match=f"(?s)Hint: .*{hint}"):
        check_top_p(fn)


def test_zero_instead_of_minus_inf_is_not_called_too_many_tokens():
    """Regression: the old check counted finite logits, so a 0 fill read as 'too many tokens'."""
    with pytest.raises(AssertionError) as info:
        check_top_p(top_p_zero)
    assert "too many" not in str(info.value)


def test_forgetting_the_scatter_is_not_called_too_few():
    """Regression: the old check said 'kept 10, expected 10 — you keep too few'."""
    with pytest.raises(AssertionError) as info:
        check_top_p(top_p_no_scatter)
    assert "too few" not in str(info.value)


def test_an_exception_is_reported_with_its_cause():
    with pytest.raises(AssertionError, match="(?s)raised RuntimeError.*Hint: scatter needs") as info:
        check_top_p(top_p_crash)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_a_stub_gets_your_turn():
    with pytest.raises(ExerciseNotDone, match="Your turn: top_p_stub"):
        check_top_p(top_p_stub)


def test_the_mistakes_are_told_apart():
    """Each recognised mistake differs from the reference, and mistakes with different hints
    differ from each other on the check's cases (else the first would take the other's hint)."""
    cases = lesson07._cases()
    want = [top_k_top_p_filter(lg, top_p=p) for lg, p in cases]
    outs = [[m(lg, p).float() for lg, p in cases] for m, _ in lesson07._MISTAKES]
    for out, (_, why) in zip(outs, lesson07._MISTAKES):
        assert not all(torch.equal(a, b) for a, b in zip(out, want)), why
    for i in range(len(outs)):
        for j in range(i):
            if lesson07._MISTAKES[i][1] != lesson07._MISTAKES[j][1]:
                assert not all(torch.equal(a, b) for a, b in zip(outs[i], outs[j])), (i, j)


def test_the_checks_do_not_rely_on_assert_statements():
    tree = ast.parse(inspect.getsource(lesson07))
    assert not [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Assert)]
