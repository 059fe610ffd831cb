"""Checks for lesson 04 (SigLIP training).

* :func:`check_recall_at_k` — the learner's ``recall_at_k(similarity, targets, k)``: the fraction
  of queries whose correct item (``targets[q]``) is among the ``k`` most similar items of row ``q``.
* :func:`check_zero_shot_classifier` — the learner's ``zero_shot_classifier(image_emb, prompt_emb)``:
  average each class's prompt embeddings, re-normalise, predict the most similar class.

Each check runs the learner's function on all its cases first, then compares with the reference.
When the results differ it looks for the usual mistake that gives exactly the learner's results
on every case (an ascending sort, an off-by-one k, a count instead of a fraction, a mean that is
not re-normalised, …) and names it in the ``Hint:``; a stub that still raises
``NotImplementedError`` gets a "✏️ Your turn" message.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from pali3_edu.exercises import (
    READ_THE_TRACEBACK,
    call_learner,
    fail,
    function_name,
    require_callable,
)
from pali3_edu.metrics import recall_at_k, zero_shot_predict

# ---------------------------------------------------------------------------------------------
# recall@k
# ---------------------------------------------------------------------------------------------

RecallCase = tuple[torch.Tensor, torch.Tensor, int]


def _recall_cases() -> list[RecallCase]:
    """Random square and rectangular matrices, then a hand-made one (no ties anywhere)."""
    hand = torch.tensor([[0.9, 0.1, 0.5, 0.0], [0.8, 0.3, 0.7, 0.6], [0.1, 0.2, 0.3, 0.4]])
    g = torch.Generator().manual_seed(0)
    cases = [(torch.randn(q, n, generator=g), torch.randint(0, n, (q,), generator=g), k)
             for q, n, k in ((10, 10, 1), (10, 10, 5), (12, 30, 3), (30, 12, 2), (7, 7, 7))]
    cases += [(hand, torch.tensor([0, 1, 3]), k) for k in (1, 2, 4)]
    return cases


def _ranks(sim: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``(queries,)`` rank of each query's target among its items, 0 = the most similar."""
    return (sim > sim.gather(1, targets[:, None])).sum(1)


def _dim0_recall(sim: torch.Tensor, targets: torch.Tensor, k: int) -> float | None:
    """top-k over the queries (dim 0) instead of the items; runs only on a square matrix."""
    q, n = sim.shape
    if q != n:
        return None
    top = sim.topk(k, dim=0).indices  # (k, items)
    if k not in (1, q):
        return None  # (k, n) == (q, 1) does not broadcast: the learner's code raises
    return (top == targets[:, None]).any(dim=1).float().mean().item()


def _unbroadcast_recall(sim: torch.Tensor, targets: torch.Tensor, k: int) -> float | None:
    """``(top == targets).any(1)`` without ``targets[:, None]``: (Q, k) against (Q,)."""
    q = sim.shape[0]
    if k not in (1, q):
        return None  # does not broadcast: raises
    top = sim.topk(k, dim=1).indices
    return (top == targets).any(dim=1).float().mean().item()


#: The usual mistakes: (what they compute on (similarity, targets, k), the hint that names them).
_RECALL_MISTAKES: list[tuple[Callable[[torch.Tensor, torch.Tensor, int], float | None], str]] = [
    (lambda s, t, k: (_ranks(s, t) >= s.shape[1] - k).float().mean().item(),
     ("you took the k LEAST similar items (an ascending sort, or topk(..., largest=False)): the "
     "most similar items come first with similarity.topk(k, dim=1) or argsort(descending=True).")),
    (lambda s, t, k: (_ranks(s, t) < k + 1).float().mean().item(),
     "off by one: you count the first k + 1 items; the target must be among the first k."),
    (lambda s, t, k: (_ranks(s, t) < k - 1).float().mean().item(),
     ("off by one: you count only the first k − 1 items (with k = 1 nothing at all); the first k "
     "items are topk(k).indices, or argsort(...)[:, :k].")),
    (lambda s, t, k: float((_ranks(s, t) < k).sum().item()),
     ("you returned the number of hits; recall@k is a fraction: divide by the number of queries "
     "(hit.float().mean()).")),
    (lambda s, t, k: (_ranks(s, t) < k).float().mean().item() / k,
     ("you averaged over the k retrieved items too: reduce each query to one hit first, "
     "(top == targets[:, None]).any(dim=1), then average over the queries.")),
    (lambda s, t, k: (_ranks(s, t) == k - 1).float().mean().item(),
     "you only count queries whose target is exactly at rank k; any rank 1 … k counts."),
    (lambda s, t, k: (_ranks(s, t) == 0).float().mean().item(),
     "your result does not depend on k: it is recall@1 for every k (argmax instead of topk(k)?)."),
    (_dim0_recall,
     ("you took the top k over dim 0 (the queries): the queries are the rows, so take the top k "
     "of each row, similarity.topk(k, dim=1).")),
    (_unbroadcast_recall,
     ("`top == targets` compares every query's top k with EVERY target (broadcasting): compare "
     "each row with its own target, top == targets[:, None] (shape (queries, 1)).")),
]


def _recall_exception_hint(err: Exception) -> str:
    msg = str(err)
    if "must match the size of tensor" in msg:
        return ("the shapes do not line up. The top-k indices must be (queries, k): the top k of "
                "each ROW, similarity.topk(k, dim=1) (dim 0 would run over the queries). Then "
                "compare each row with its own target, targets[:, None] of shape (queries, 1), "
                "which broadcasts along k.")
    if "out of range" in msg or "selected index k" in msg:
        return ("k is larger than that dimension: take the top k along dim=1 (the items of each "
                "query), not along the queries.")
    return READ_THE_TRACEBACK


def _as_recall(got: Any, call: str, queries: int) -> float:
    """The learner's result as a float, or an AssertionError that says what it is instead."""
    if got is None:
        raise fail(f"{call} returned None.", "end your function with `return <the fraction>`.")
    if isinstance(got, torch.Tensor):
        if got.numel() != 1:
            shape = tuple(got.shape)
            hint = ("you return one hit per query: average them, hit.float().mean().item()."
                    if shape == (queries,) else
                    "reduce to one number: any over the k retrieved items, then the mean over queries.")
            raise fail(f"{call} returned a tensor of shape {shape}, not one number.", hint)
        return float(got.item())
    if isinstance(got, (bool, int, float)) or hasattr(got, "__float__"):
        return float(got)
    raise fail(f"{call} returned a {type(got).__name__}.", "return the fraction as a float (.item()).")


def check_recall_at_k(fn: Callable[[torch.Tensor, torch.Tensor, int], float]) -> None:
    """Compare ``fn(similarity (Q, N), targets (Q,), k) -> float`` with
    :func:`pali3_edu.metrics.recall_at_k` on random and hand-made cases."""
    require_callable(fn, "check_recall_at_k")
    name = function_name(fn)
    cases = _recall_cases()
    got_values: list[float] = []
    crash: AssertionError | None = None
    for sim, targets, k in cases:
        call = f"{name}(similarity {tuple(sim.shape)}, targets {tuple(targets.shape)}, k={k})"
        try:
            got = call_learner(fn, (sim.clone(), targets.clone(), k), call, _recall_exception_hint)
        except AssertionError as err:
            if type(err) is not AssertionError:  # ExerciseNotDone: say "your turn" at once
                raise
            crash = err
            break
        got_values.append(_as_recall(got, call, sim.shape[0]))
    seen = cases[: len(got_values)]
    wants = [recall_at_k(sim, targets, k) for sim, targets, k in seen]
    wrong = [i for i, (g, w) in enumerate(zip(got_values, wants)) if not math.isclose(g, w, abs_tol=1e-6)]
    if wrong:
        i = wrong[0]
        sim, _, k = seen[i]
        hint = next((why for mistake, why in _RECALL_MISTAKES
                     if all(v is not None and math.isclose(g, v, abs_tol=1e-6)
                            for g, v in zip(got_values, (mistake(s, t, kk) for s, t, kk in seen)))),
                    "the steps: top = similarity.topk(k, dim=1).indices  # (queries, k); "
                    "hit = (top == targets[:, None]).any(dim=1); return hit.float().mean().item().")
        raise fail(f"{name}(similarity {tuple(sim.shape)}, k={k}) returned {got_values[i]:.4f}, "
                   f"expected {wants[i]:.4f}.", hint)
    if crash is not None:
        raise crash
    print(f"✅ {name} matches the reference on {len(cases)} cases.")


# ---------------------------------------------------------------------------------------------
# zero-shot classification with prompt ensembles
# ---------------------------------------------------------------------------------------------


def _zero_shot_reference(image_emb: torch.Tensor, prompt_emb: torch.Tensor) -> torch.Tensor:
    class_emb = F.normalize(prompt_emb.mean(dim=1), dim=-1)  # (C, D)
    return zero_shot_predict(image_emb, class_emb)


def _zero_shot_inputs(seed: int, n: int = 64, c: int = 6, p: int = 12, d: int = 16):
    """Unit-norm images and prompts whose classes have very different spreads, so skipping the
    re-normalisation (or using the max over prompts) changes many predictions."""
    g = torch.Generator().manual_seed(seed)
    centers = F.normalize(torch.randn(c, d, generator=g), dim=-1)
    spread = torch.linspace(0.2, 2.0, c)[:, None, None]  # tight and loose prompt clusters
    prompts = F.normalize(centers[:, None] + spread * torch.randn(c, p, d, generator=g), dim=-1)
    labels = torch.randint(0, c, (n,), generator=g)
    images = F.normalize(centers[labels] + 0.9 * torch.randn(n, d, generator=g), dim=-1)
    return images, prompts


_ZERO_SHOT_MISTAKES: list[tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], str]] = [
    (lambda im, pr: (im @ pr.mean(1).T).argmax(-1),
     ("you averaged the prompt embeddings but did not re-normalise the mean: a class whose prompts "
     "disagree gets a shorter mean vector and is unfairly penalised. Use "
     "F.normalize(prompt_emb.mean(dim=1), dim=-1).")),
    (lambda im, pr: (im @ pr.reshape(-1, pr.shape[-1]).T).argmax(-1) // pr.shape[1],
     ("you picked the class of the single most similar prompt; the ensemble averages each class's "
     "prompt embeddings first (one embedding per class).")),
    (lambda im, pr: (im @ pr.reshape(-1, pr.shape[-1]).T).argmax(-1),
     ("you return the index of the most similar prompt among all C·P prompts, not a class; and "
     "the ensemble averages each class's prompts first (one embedding per class).")),
    (lambda im, pr: (im @ F.normalize(pr.mean(1), dim=-1).T).argmin(-1),
     "you took the LEAST similar class (argmin): predict the most similar one, argmax(dim=-1)."),
    (lambda im, pr: (im @ F.normalize(pr.mean(0), dim=-1).T).argmax(-1),
     ("you averaged over dim 0, the classes: prompt_emb is (classes, prompts, dim), so average "
     "each class's prompts over dim=1.")),
    (lambda im, pr: (im @ F.normalize(pr.mean(1), dim=0).T).argmax(-1),
     ("you normalised along dim 0 (across classes): normalise each class embedding along its "
     "features, F.normalize(..., dim=-1).")),
    (lambda im, pr: (im @ pr[:, 0].T).argmax(-1),
     "you used only the first prompt of each class: average all P prompts, prompt_emb.mean(dim=1)."),
]


def _zero_shot_exception_hint(err: Exception) -> str:
    msg = str(err)
    if "cannot be multiplied" in msg or "size mismatch" in msg or "must match the size" in msg:
        return ("image_emb is (N, D) and prompt_emb (C, P, D): average over the prompts first, "
                "class_emb = F.normalize(prompt_emb.mean(dim=1), dim=-1) of shape (C, D), then "
                "image_emb @ class_emb.T is (N, C).")
    return READ_THE_TRACEBACK


def _as_predictions(got: Any, call: str, n: int, c: int) -> torch.Tensor:
    if got is None:
        raise fail(f"{call} returned None.", "end your function with `return <predicted classes>`.")
    try:
        got = torch.as_tensor(got)
    except (TypeError, ValueError, RuntimeError):  # a str, a dict, ...
        raise fail(f"{call} returned a {type(got).__name__}.",
                   "return a tensor of class indices, one per image.") from None
    if got.shape == (n, c):
        raise fail(f"{call} returned shape {tuple(got.shape)} (images, classes): the scores, not a prediction.",
                   "take the most similar class of each image: .argmax(dim=-1).")
    if got.shape != (n,):
        raise fail(f"{call} returned shape {tuple(got.shape)}, expected ({n},): one class index per image.",
                   "image_emb @ class_emb.T is (images, classes): take the argmax over the classes, "
                   "dim=-1 (argmax over dim 0 gives one index per class).")
    if got.is_floating_point() and not torch.equal(got, got.round()):
        raise fail(f"{call} returned float values such as {got[0].item():.3f}, not class indices.",
                   "you return the best similarity; return WHICH class it is: .argmax(dim=-1) "
                   "(or .max(dim=-1).indices).")
    return got.long()


def check_zero_shot_classifier(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """Compare ``fn(image_emb (N, D), prompt_emb (C, P, D)) -> (N,) class indices`` with the
    reference: class embedding = normalise(mean over the P prompts), prediction = argmax cosine."""
    require_callable(fn, "check_zero_shot_classifier")
    name = function_name(fn)
    inputs = [_zero_shot_inputs(seed) for seed in range(4)]
    got_all = []
    for images, prompts in inputs:
        call = f"{name}(image_emb {tuple(images.shape)}, prompt_emb {tuple(prompts.shape)})"
        got = call_learner(fn, (images.clone(), prompts.clone()), call, _zero_shot_exception_hint)
        got_all.append(_as_predictions(got, call, images.shape[0], prompts.shape[0]))
    for seed, ((images, prompts), got) in enumerate(zip(inputs, got_all)):
        want = _zero_shot_reference(images, prompts)
        if torch.equal(got, want):
            continue
        share = (got != want).float().mean().item()
        hint = next((why for mistake, why in _ZERO_SHOT_MISTAKES
                     if all(torch.equal(g, mistake(im, pr)) for g, (im, pr) in zip(got_all, inputs))),
                    "the steps: class_emb = F.normalize(prompt_emb.mean(dim=1), dim=-1)  # (C, D); "
                    "return (image_emb @ class_emb.T).argmax(dim=-1).")
        raise fail(f"{name}: {share:.0%} of the {len(got)} predictions differ from the reference "
                   f"(case {seed + 1} of {len(inputs)}).", hint)
    print(f"✅ {name} matches the reference on {len(inputs)} random cases.")


__all__ = ["check_recall_at_k", "check_zero_shot_classifier"]
