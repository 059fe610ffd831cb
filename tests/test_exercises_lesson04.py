"""Lesson 04's exercise checks: the solutions pass, each usual mistake gets the hint that names
its real cause (also when several mistakes give the same number on one case), a stub gets
"your turn", and nothing crashes with a raw TypeError."""

from __future__ import annotations

import ast
import inspect
import math

import pytest
import torch
import torch.nn.functional as F

from pali3_edu.exercises import ExerciseNotDone, lesson04
from pali3_edu.exercises.lesson04 import check_recall_at_k, check_zero_shot_classifier

# --------------------------------------------------------------------------------------------
# recall@k
# --------------------------------------------------------------------------------------------


def recall_correct(similarity, targets, k):
    top = similarity.topk(k, dim=1).indices
    return (top == targets[:, None]).any(dim=1).float().mean().item()


def recall_argsort(similarity, targets, k):  # also right, returns a tensor
    top = similarity.argsort(dim=1, descending=True)[:, :k]
    return (top == targets[:, None]).any(dim=1).float().mean()


def recall_ascending(similarity, targets, k):
    top = similarity.argsort(dim=1)[:, :k]
    return (top == targets[:, None]).any(dim=1).float().mean().item()


def recall_smallest(similarity, targets, k):
    top = similarity.topk(k, dim=1, largest=False).indices
    return (top == targets[:, None]).any(dim=1).float().mean().item()


def recall_k_plus_1(similarity, targets, k):
    top = similarity.argsort(dim=1, descending=True)[:, : k + 1]
    return (top == targets[:, None]).any(dim=1).float().mean().item()


def recall_k_minus_1(similarity, targets, k):
    top = similarity.argsort(dim=1, descending=True)[:, : k - 1]
    return (top == targets[:, None]).any(dim=1).float().mean().item()


def recall_count(similarity, targets, k):
    top = similarity.topk(k, dim=1).indices
    return (top == targets[:, None]).any(dim=1).sum().item()


def recall_mean_over_k(similarity, targets, k):
    top = similarity.topk(k, dim=1).indices
    return (top == targets[:, None]).float().mean().item()


def recall_rank_k_only(similarity, targets, k):
    top = similarity.topk(k, dim=1).indices
    return (top[:, -1] == targets).float().mean().item()


def recall_ignores_k(similarity, targets, k):
    return (similarity.argmax(dim=1) == targets).float().mean().item()


def recall_dim0(similarity, targets, k):
    top = similarity.topk(k, dim=0).indices
    return (top == targets[:, None]).any(dim=1).float().mean().item()


def recall_no_broadcast(similarity, targets, k):
    top = similarity.topk(k, dim=1).indices
    return (top == targets).any(dim=1).float().mean().item()


def recall_per_query(similarity, targets, k):
    top = similarity.topk(k, dim=1).indices
    return (top == targets[:, None]).any(dim=1).float()


def recall_none(similarity, targets, k):
    top = similarity.topk(k, dim=1).indices
    (top == targets[:, None]).any(dim=1).float().mean()


def recall_stub(similarity, targets, k):
    raise NotImplementedError("✏️ Your turn: write recall_stub — then run this cell again to check it.")


@pytest.mark.parametrize("fn", [recall_correct, recall_argsort])
def test_check_recall_accepts_the_solution(fn, capsys):
    check_recall_at_k(fn)
    assert "✅" in capsys.readouterr().out


@pytest.mark.parametrize(
    "fn, hint",
    [
        (recall_ascending, "LEAST similar"),
        (recall_smallest, "LEAST similar"),
        (recall_k_plus_1, "first k \\+ 1 items"),
        (recall_k_minus_1, "first k − 1 items"),
        (recall_count, "number of hits"),
        (recall_mean_over_k, "averaged over the k retrieved items"),
        (recall_rank_k_only, "exactly at rank k"),
        (recall_ignores_k, "does not depend on k"),
        (recall_dim0, "dim 0 would run over the queries"),
        (recall_no_broadcast, "targets\\[:, None\\]"),
        (recall_per_query, "one hit per query"),
        (recall_none, "end your function with `return"),
    ],
)
def test_check_recall_names_the_mistake(fn, hint):
    with pytest.raises(AssertionError, match=f"(?s)Hint: .*{hint}"):
        check_recall_at_k(fn)


def test_ascending_sort_is_not_called_off_by_one():
    """Regression: at k = 1 an ascending sort and "k − 1" both give 0 on the first case."""
    with pytest.raises(AssertionError) as info:
        check_recall_at_k(recall_ascending)
    assert "off by one" not in str(info.value).lower()


def test_recall_stub_gets_your_turn():
    with pytest.raises(ExerciseNotDone, match="Your turn: recall_stub"):
        check_recall_at_k(recall_stub)


def test_recall_mistakes_are_told_apart():
    """No two recognised mistakes give the same values on every case, and none is right."""
    cases = lesson04._recall_cases()
    want = [lesson04.recall_at_k(s, t, k) for s, t, k in cases]
    values = [[m(s, t, k) for s, t, k in cases] for m, _ in lesson04._RECALL_MISTAKES]

    def same(a, b):
        return all(x is not None and y is not None and math.isclose(x, y, abs_tol=1e-6) for x, y in zip(a, b))

    for i, v in enumerate(values):
        assert not same(v, want), lesson04._RECALL_MISTAKES[i][1]
        for j in range(i):
            assert not same(v, values[j]), (i, j)


# --------------------------------------------------------------------------------------------
# zero-shot classifier
# --------------------------------------------------------------------------------------------


def zs_correct(image_emb, prompt_emb):
    class_emb = F.normalize(prompt_emb.mean(dim=1), dim=-1)
    return (image_emb @ class_emb.T).argmax(dim=-1)


def zs_sum_then_normalise(image_emb, prompt_emb):  # also right
    class_emb = F.normalize(prompt_emb.sum(dim=1), dim=-1)
    return torch.einsum("nd,cd->nc", image_emb, class_emb).max(dim=-1).indices


def zs_not_normalised(image_emb, prompt_emb):
    return (image_emb @ prompt_emb.mean(dim=1).T).argmax(dim=-1)


def zs_best_prompt(image_emb, prompt_emb):
    sims = torch.einsum("nd,cpd->ncp", image_emb, prompt_emb)
    return sims.amax(dim=-1).argmax(dim=-1)


def zs_flat_index(image_emb, prompt_emb):
    return (image_emb @ prompt_emb.reshape(-1, prompt_emb.shape[-1]).T).argmax(dim=-1)


def zs_argmin(image_emb, prompt_emb):
    class_emb = F.normalize(prompt_emb.mean(dim=1), dim=-1)
    return (image_emb @ class_emb.T).argmin(dim=-1)


def zs_mean_over_classes(image_emb, prompt_emb):
    class_emb = F.normalize(prompt_emb.mean(dim=0), dim=-1)
    return (image_emb @ class_emb.T).argmax(dim=-1)


def zs_normalise_wrong_dim(image_emb, prompt_emb):
    class_emb = F.normalize(prompt_emb.mean(dim=1), dim=0)
    return (image_emb @ class_emb.T).argmax(dim=-1)


def zs_first_prompt(image_emb, prompt_emb):
    return (image_emb @ prompt_emb[:, 0].T).argmax(dim=-1)


def zs_scores(image_emb, prompt_emb):
    return image_emb @ F.normalize(prompt_emb.mean(dim=1), dim=-1).T


def zs_argmax_dim0(image_emb, prompt_emb):
    return (image_emb @ F.normalize(prompt_emb.mean(dim=1), dim=-1).T).argmax(dim=0)


def zs_values(image_emb, prompt_emb):
    return (image_emb @ F.normalize(prompt_emb.mean(dim=1), dim=-1).T).max(dim=-1).values


def zs_none(image_emb, prompt_emb):
    F.normalize(prompt_emb.mean(dim=1), dim=-1)


def zs_crash(image_emb, prompt_emb):
    return image_emb @ prompt_emb.reshape(len(prompt_emb), -1).T  # (N, D) @ (P·D, C)


def zs_stub(image_emb, prompt_emb):
    raise NotImplementedError("✏️ Your turn")


@pytest.mark.parametrize("fn", [zs_correct, zs_sum_then_normalise])
def test_check_zero_shot_accepts_the_solution(fn, capsys):
    check_zero_shot_classifier(fn)
    assert "✅" in capsys.readouterr().out


@pytest.mark.parametrize(
    "fn, hint",
    [
        (zs_not_normalised, "did not re-normalise the mean"),
        (zs_best_prompt, "single most similar prompt"),
        (zs_flat_index, "index of the most similar prompt among all C·P prompts"),
        (zs_argmin, "LEAST similar class"),
        (zs_mean_over_classes, "averaged over dim 0, the classes"),
        (zs_normalise_wrong_dim, "normalised along dim 0"),
        (zs_first_prompt, "only the first prompt"),
        (zs_scores, "take the most similar class"),
        (zs_argmax_dim0, "argmax over the classes, dim=-1"),
        (zs_values, "return WHICH class"),
        (zs_none, "end your function with `return"),
        (zs_crash, "average over the prompts first"),
    ],
)
def test_check_zero_shot_names_the_mistake(fn, hint):
    with pytest.raises(AssertionError, match=f"(?s)Hint: .*{hint}"):
        check_zero_shot_classifier(fn)


def test_zero_shot_stub_gets_your_turn():
    with pytest.raises(ExerciseNotDone, match="Your turn: zs_stub"):
        check_zero_shot_classifier(zs_stub)


def test_zero_shot_mistakes_are_told_apart():
    inputs = [lesson04._zero_shot_inputs(seed) for seed in range(4)]
    preds = [[m(i, p) for i, p in inputs] for m, _ in lesson04._ZERO_SHOT_MISTAKES]
    want = [lesson04._zero_shot_reference(i, p) for i, p in inputs]
    for a, (_, why) in zip(preds, lesson04._ZERO_SHOT_MISTAKES):
        assert not all(torch.equal(x, y) for x, y in zip(a, want)), why
    for i in range(len(preds)):
        for j in range(i):
            assert not all(torch.equal(x, y) for x, y in zip(preds[i], preds[j])), (i, j)


def test_the_checks_do_not_rely_on_assert_statements():
    tree = ast.parse(inspect.getsource(lesson04))
    assert not [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Assert)]
