"""Checks for lesson 04 (SigLIP training).

* :func:`check_recall_at_k` — the learner's ``recall_at_k(similarity, targets, k)``: the fraction
  of queries whose correct item (``targets[q]``) is among the ``k`` most similar items of row ``q``.
* :func:`check_zero_shot_classifier` — the learner's ``zero_shot_classifier(image_emb, prompt_emb)``:
  average each class's prompt embeddings, re-normalise, predict the most similar class.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from pali3_edu.metrics import recall_at_k, zero_shot_predict


def _fail(msg: str) -> None:
    raise AssertionError(msg)


# ---------------------------------------------------------------------------------------------
# recall@k
# ---------------------------------------------------------------------------------------------


def _recall_variants(sim: torch.Tensor, targets: torch.Tensor, k: int) -> dict[str, float]:
    """Values that typical mistakes produce, with the explanation to show."""
    q, n = sim.shape
    ranks = (sim > sim[torch.arange(q), targets][:, None]).sum(1)  # 0 = best
    out = {
        "Off by one: the target must be among the first k items, not the first k+1.":
            (ranks < k + 1).float().mean().item(),
        "Off by one (k−1): with k = 1 the best item itself counts as retrieved.":
            (ranks < k - 1).float().mean().item(),
        "You returned the number of hits; recall@k is a fraction (divide by the number of queries).":
            float((ranks < k).sum().item()),
        "You only counted queries whose target is exactly at rank k; any rank 1..k counts.":
            (ranks == k - 1).float().mean().item(),
        "You took the k *least* similar items: topk returns the largest by default (largest=True).":
            (ranks >= n - k).float().mean().item(),
    }
    if q == n:  # a square matrix lets the "wrong dimension" mistake run without an error
        col_top = sim.topk(min(k, q), dim=0).indices  # (k, items)
        hits = [(col_top[:, j] == j).any().item() for j in range(n)]
        out["You took the top k over dim 0 (the queries): the queries are the rows, so take the "
            "top k over dim=1 (the items)."] = sum(hits) / q
    return out


def check_recall_at_k(fn: Callable[[torch.Tensor, torch.Tensor, int], float]) -> None:
    """Compare ``fn(similarity (Q, N), targets (Q,), k) -> float`` with
    :func:`pali3_edu.metrics.recall_at_k` on random and hand-made cases."""
    hand = torch.tensor([[0.9, 0.1, 0.5, 0.0], [0.8, 0.3, 0.7, 0.6], [0.1, 0.2, 0.3, 0.4]])
    g = torch.Generator().manual_seed(0)
    cases = [(torch.randn(q, n, generator=g), torch.randint(0, n, (q,), generator=g), k)
             for q, n, k in ((10, 10, 1), (10, 10, 5), (12, 30, 3), (30, 12, 2), (7, 7, 7))]
    cases += [(hand, torch.tensor([0, 1, 3]), k) for k in (1, 2, 4)]
    for sim, targets, k in cases:
        try:
            got = fn(sim.clone(), targets.clone(), k)
        except Exception as e:  # noqa: BLE001
            _fail(f"Your recall_at_k raised {type(e).__name__}: {e} (similarity {tuple(sim.shape)}, k={k}).")
        got = float(got.item() if isinstance(got, torch.Tensor) else got)
        want = recall_at_k(sim, targets, k)
        if not math.isclose(got, want, abs_tol=1e-6):
            hint = next((why for why, v in _recall_variants(sim, targets, k).items()
                         if math.isclose(got, v, abs_tol=1e-6)),
                        "Check: top = similarity.topk(k, dim=1).indices; hit = (top == targets[:, None]).any(1); "
                        "return hit.float().mean().item().")
            _fail(f"similarity {tuple(sim.shape)}, k = {k}: you got {got:.4f}, expected {want:.4f}.\n{hint}")
    print(f"✅ recall_at_k matches the reference on {len(cases)} cases.")


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


def check_zero_shot_classifier(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """Compare ``fn(image_emb (N, D), prompt_emb (C, P, D)) -> (N,) class indices`` with the
    reference: class embedding = normalise(mean over the P prompts), prediction = argmax cosine."""
    for seed in range(4):
        images, prompts = _zero_shot_inputs(seed)
        try:
            got = fn(images.clone(), prompts.clone())
        except Exception as e:  # noqa: BLE001
            _fail(f"Your zero_shot_classifier raised {type(e).__name__}: {e} "
                  f"(image_emb {tuple(images.shape)}, prompt_emb {tuple(prompts.shape)}).")
        got = torch.as_tensor(got)
        if got.shape != (images.shape[0],):
            _fail(f"Return one class index per image, shape ({images.shape[0]},); got {tuple(got.shape)}. "
                  "Did you take the argmax over the wrong dimension?")
        want = _zero_shot_reference(images, prompts)
        if torch.equal(got.long(), want):
            continue
        wrong = (got.long() != want).float().mean().item()
        mean_unnorm = (images @ prompts.mean(1).T).argmax(-1)
        max_prompt = (images @ prompts.reshape(-1, prompts.shape[-1]).T).argmax(-1) // prompts.shape[1]
        if torch.equal(got.long(), mean_unnorm):
            hint = ("You averaged the prompt embeddings but did not re-normalise the mean: a class "
                    "whose prompts disagree gets a shorter mean vector and is unfairly penalised. "
                    "Use F.normalize(prompt_emb.mean(1), dim=-1).")
        elif torch.equal(got.long(), max_prompt):
            hint = ("You picked the class of the single most similar prompt; the ensemble averages "
                    "each class's prompt embeddings first (one embedding per class).")
        else:
            hint = ("Steps: class_emb = F.normalize(prompt_emb.mean(dim=1), dim=-1)  # (C, D); "
                    "return (image_emb @ class_emb.T).argmax(dim=-1).")
        _fail(f"{wrong:.0%} of the predictions differ from the reference (seed {seed}).\n{hint}")
    print("✅ zero_shot_classifier matches the reference on 4 random cases.")
