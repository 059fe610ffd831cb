"""Lesson 05's exercise check (the span sampler): right samplers pass, each usual mistake gets
the hint that names its real cause, exceptions are reported (not raw), a stub gets "your turn"."""

from __future__ import annotations

import ast
import inspect
import random

import pytest
import torch

from pali3_edu.exercises import ExerciseNotDone, lesson05
from pali3_edu.exercises.lesson05 import check_random_spans
from pali3_edu.ul2 import random_spans_noise_mask, span_counts


def _split(n, k, generator):  # n items into k non-empty parts, uniformly
    cuts = torch.randperm(n - 1, generator=generator)[: k - 1].sort().values + 1
    return torch.cat([torch.tensor([0]), cuts, torch.tensor([n])]).diff().tolist()


def _interleave(keep, noise):
    mask = []
    for k, n in zip(keep, noise):
        mask += [False] * k + [True] * n
    return torch.tensor(mask, dtype=torch.bool)


def spans_correct(length, noise_density, mean_span, generator):
    num_noise, num_spans = span_counts(length, noise_density, mean_span)
    return _interleave(_split(length - num_noise, num_spans, generator), _split(num_noise, num_spans, generator))


def spans_own_counts(length, noise_density, mean_span, generator):  # the formulas, no span_counts
    num_noise = min(max(round(length * noise_density), 1), length - 1)
    num_spans = max(round(num_noise / mean_span), 1)
    return _interleave(_split(length - num_noise, num_spans, generator), _split(num_noise, num_spans, generator))


def spans_noise_first(length, noise_density, mean_span, generator):
    num_noise, num_spans = span_counts(length, noise_density, mean_span)
    keep, noise = _split(length - num_noise, num_spans, generator), _split(num_noise, num_spans, generator)
    mask = []
    for k, n in zip(keep, noise):
        mask += [True] * n + [False] * k
    return torch.tensor(mask)


def spans_truncated(length, noise_density, mean_span, generator):
    num_noise = max(int(length * noise_density), 1)
    num_spans = max(round(num_noise / mean_span), 1)
    return _interleave(_split(length - num_noise, num_spans, generator), _split(num_noise, num_spans, generator))


def spans_geometric(length, noise_density, mean_span, generator):  # each position/span drawn alone
    mask, noise = [], False
    while len(mask) < length:
        mean = mean_span if noise else mean_span * (1 - noise_density) / noise_density
        run = 1 + int(torch.distributions.Geometric(probs=torch.tensor(1 / mean)).sample().item())
        mask += [noise] * run
        noise = not noise
    return torch.tensor(mask[:length])


def spans_empty_last_run(length, noise_density, mean_span, generator):  # two spans touch
    num_noise, num_spans = span_counts(length, noise_density, mean_span)
    keep = _split(length - num_noise, num_spans - 1, generator) + [0] if num_spans > 1 else [length - num_noise]
    return _interleave(keep, _split(num_noise, num_spans, generator))


def spans_one_too_many(length, noise_density, mean_span, generator):
    num_noise, num_spans = span_counts(length, noise_density, mean_span)
    num_spans = min(num_spans + 1, num_noise, length - num_noise)
    return _interleave(_split(length - num_noise, num_spans, generator), _split(num_noise, num_spans, generator))


def spans_ends_kept(length, noise_density, mean_span, generator):
    num_noise, num_spans = span_counts(length, noise_density, mean_span)
    keep = _split(length - num_noise, num_spans + 1, generator) if length - num_noise > num_spans else None
    if keep is None:
        return spans_correct(length, noise_density, mean_span, generator)
    noise = _split(num_noise, num_spans, generator) + [0]
    return _interleave(keep, noise)


def spans_global_rng(length, noise_density, mean_span, generator):
    num_noise, num_spans = span_counts(length, noise_density, mean_span)

    def split(n, k):
        cuts = torch.randperm(n - 1)[: k - 1].sort().values + 1
        return torch.cat([torch.tensor([0]), cuts, torch.tensor([n])]).diff().tolist()

    return _interleave(split(length - num_noise, num_spans), split(num_noise, num_spans))


def spans_python_random(length, noise_density, mean_span, generator):
    num_noise, num_spans = span_counts(length, noise_density, mean_span)

    def split(n, k):
        cuts = sorted(random.sample(range(1, n), k - 1))
        return [b - a for a, b in zip([0, *cuts], [*cuts, n])]

    return _interleave(split(length - num_noise, num_spans), split(num_noise, num_spans))


def spans_fixed_lengths(length, noise_density, mean_span, generator):  # never random
    num_noise, num_spans = span_counts(length, noise_density, mean_span)

    def split(n, k):
        return [n // k] * (k - 1) + [n - n // k * (k - 1)]

    return _interleave(split(length - num_noise, num_spans), split(num_noise, num_spans))


def spans_biased(length, noise_density, mean_span, generator):  # one part after another, triangular
    num_noise, num_spans = span_counts(length, noise_density, mean_span)

    def split(n, k):
        parts = []
        for left in range(k, 1, -1):
            hi = n - (left - 1)
            a, b = (int(torch.randint(1, hi + 1, (1,), generator=generator)) for _ in range(2))
            parts.append((a + b) // 2)
            n -= parts[-1]
        return [*parts, n]

    return _interleave(split(length - num_noise, num_spans), split(num_noise, num_spans))


def spans_int_tensor(length, noise_density, mean_span, generator):
    return spans_correct(length, noise_density, mean_span, generator).long()


def spans_list(length, noise_density, mean_span, generator):
    return spans_correct(length, noise_density, mean_span, generator).tolist()


def spans_none(length, noise_density, mean_span, generator):
    spans_correct(length, noise_density, mean_span, generator)


def spans_too_long(length, noise_density, mean_span, generator):
    return torch.cat([spans_correct(length, noise_density, mean_span, generator), torch.tensor([True])])


def spans_crash(length, noise_density, mean_span, generator):  # n - 2 gaps: fails when n = 1
    num_noise, num_spans = span_counts(length, noise_density, mean_span)

    def split(n, k):
        cuts = torch.randperm(n - 2, generator=generator)[: k - 1].sort().values + 1
        return torch.cat([torch.tensor([0]), cuts, torch.tensor([n])]).diff().tolist()

    return _interleave(split(length - num_noise, num_spans), split(num_noise, num_spans))


def spans_stub(length, noise_density, mean_span, generator):
    raise NotImplementedError("✏️ Your turn: write spans_stub — then run the check cell below.")


@pytest.mark.parametrize("fn", [spans_correct, spans_own_counts, random_spans_noise_mask])
def test_check_random_spans_accepts_right_samplers(fn, capsys):
    check_random_spans(fn)
    assert "✅" in capsys.readouterr().out


@pytest.mark.parametrize(
    "fn, hint",
    [
        (spans_noise_first, "starting with KEPT tokens"),
        (spans_truncated, "you truncated 512·0.15 = 76.8 to 76"),
        (spans_geometric, "number of noise tokens is not random"),
        (spans_empty_last_run, "touch and merge into one"),
        (spans_one_too_many, "the number of spans is fixed"),
        (spans_ends_kept, "always ends with a noise span"),
        (spans_global_rng, "draw every random number from `generator`"),
        (spans_python_random, "draw every random number from `generator`"),
        (spans_fixed_lengths, "span lengths must be random"),
        (spans_biased, "favours"),
        (spans_int_tensor, "return a bool tensor"),
        (spans_list, "return a bool tensor: torch.tensor"),
        (spans_none, "end your function with `return mask`"),
        (spans_too_long, "add up to length"),
        (spans_crash, "torch.randperm\\(n - 1, generator=generator\\)"),
    ],
)
def test_check_random_spans_names_the_mistake(fn, hint):
    with pytest.raises(AssertionError, match=f"(?s)Hint: .*{hint}"):
        check_random_spans(fn)


def test_an_exception_is_reported_with_its_cause():
    with pytest.raises(AssertionError, match="raised RuntimeError") as info:
        check_random_spans(spans_crash)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_a_stub_gets_your_turn():
    with pytest.raises(ExerciseNotDone, match="Your turn: spans_stub"):
        check_random_spans(spans_stub)


def test_the_check_leaves_the_global_rng_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    check_random_spans(spans_correct)
    assert torch.equal(torch.rand(3), expected)


def test_the_checks_do_not_rely_on_assert_statements():
    tree = ast.parse(inspect.getsource(lesson05))
    assert not [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Assert)]
