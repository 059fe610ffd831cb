"""Evaluation metrics, one small function per metric.

Sections follow the tasks of the course:

- **retrieval / zero-shot** (lesson 04, SigLIP): :func:`recall_at_k`, :func:`zero_shot_predict`,
  :func:`zero_shot_accuracy`;
- **boxes** (detection, referring expressions): :func:`iou`.

Later lessons add captioning (CIDEr), VQA accuracy and ANLS here, each in its own section.
All functions take plain tensors (or sequences) and return Python floats, so a notebook can
print them directly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

# ---------------------------------------------------------------------------------------------
# Retrieval and zero-shot classification
# ---------------------------------------------------------------------------------------------


def _relevance_matrix(targets: Tensor | Sequence, num_queries: int, num_items: int) -> Tensor:
    """Turn ``targets`` into a boolean ``(queries, items)`` matrix of relevant items.

    ``targets`` is either one correct item index per query (``(queries,)`` integers) or already a
    ``(queries, items)`` boolean matrix (several correct items per query, e.g. an image with
    five captions).
    """
    targets = torch.as_tensor(targets)
    if targets.dtype == torch.bool:
        if targets.shape != (num_queries, num_items):
            raise ValueError(
                f"A boolean targets matrix must have shape (queries, items) = "
                f"{(num_queries, num_items)}, got {tuple(targets.shape)}."
            )
        return targets
    if targets.ndim != 1 or targets.shape[0] != num_queries:
        raise ValueError(
            f"targets must hold one item index per query, shape ({num_queries},), "
            f"got {tuple(targets.shape)}. For several correct items pass a boolean "
            "(queries, items) matrix."
        )
    if targets.numel() and (targets.min() < 0 or targets.max() >= num_items):
        raise ValueError(f"target indices must lie in [0, {num_items}), got {targets.tolist()}.")
    relevant = torch.zeros(num_queries, num_items, dtype=torch.bool)
    relevant[torch.arange(num_queries), targets.long()] = True
    return relevant


def recall_at_k(similarity: Tensor, targets: Tensor | Sequence, k: int = 1) -> float:
    """Fraction of queries with at least one correct item among their ``k`` most similar items.

    Args:
        similarity: ``(queries, items)`` scores, higher = more similar. For image→text retrieval
            the rows are images and the columns captions; for text→image pass ``similarity.T``.
        targets: the correct item of each query, ``(queries,)`` indices, or a boolean
            ``(queries, items)`` matrix when a query has several correct items.
        k: how many top items count as retrieved.

    >>> recall_at_k(torch.tensor([[0.9, 0.1], [0.8, 0.3]]), [0, 1], k=1)
    0.5
    """
    if similarity.ndim != 2:
        raise ValueError(f"similarity must be (queries, items), got shape {tuple(similarity.shape)}")
    q, n = similarity.shape
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    relevant = _relevance_matrix(targets, q, n).to(similarity.device)
    top = similarity.topk(min(k, n), dim=1).indices  # (queries, k)
    hit = relevant.gather(1, top).any(dim=1)  # (queries,)
    return hit.float().mean().item()


def zero_shot_predict(image_emb: Tensor, class_emb: Tensor, aggregate: str = "mean") -> Tensor:
    """Class index per image: the class whose text embedding(s) are most similar.

    ``image_emb`` is ``(images, dim)``. ``class_emb`` is either ``(classes, dim)`` (one embedding
    per class) or ``(classes, prompts, dim)`` (several prompts per class), combined by
    ``aggregate``:

    - ``"mean"``: prompt ensembling as in CLIP — average each class's prompt embeddings,
      re-normalise, then compare: one embedding per class.
    - ``"max"``: score each class by its *best-matching* prompt (the class of the most similar
      prompt wins). Better when the prompts of a class differ in a strong attribute that the
      average would wash out (lesson 04: colour dominates shape).

    Embeddings should be L2 normalised (cosine similarity). SigLIP's ``t`` and ``b`` are monotone,
    so they do not change the arg-max and are not needed here.
    """
    if image_emb.shape[-1] != class_emb.shape[-1]:
        raise ValueError(
            f"Embedding sizes differ: images {image_emb.shape[-1]}, classes {class_emb.shape[-1]}."
        )
    if class_emb.ndim == 3:
        if aggregate == "mean":
            class_emb = torch.nn.functional.normalize(class_emb.mean(dim=1), dim=-1)
        elif aggregate == "max":
            sims = torch.einsum("nd,cpd->ncp", image_emb, class_emb)  # (images, classes, prompts)
            return sims.amax(dim=-1).argmax(dim=-1)
        else:
            raise ValueError(f"aggregate must be 'mean' or 'max', got {aggregate!r}")
    return (image_emb @ class_emb.T).argmax(dim=-1)


def zero_shot_accuracy(
    image_emb: Tensor, class_emb: Tensor, labels: Tensor | Sequence[int], aggregate: str = "mean"
) -> float:
    """Accuracy of :func:`zero_shot_predict` against ``labels`` (``(images,)`` class indices)."""
    labels = torch.as_tensor(labels, device=image_emb.device)
    if labels.shape != image_emb.shape[:1]:
        raise ValueError(f"Need one label per image: {image_emb.shape[0]} images, {labels.shape} labels.")
    return (zero_shot_predict(image_emb, class_emb, aggregate) == labels).float().mean().item()


# ---------------------------------------------------------------------------------------------
# Boxes
# ---------------------------------------------------------------------------------------------


def iou(box_a: Tensor | Sequence[float], box_b: Tensor | Sequence[float]) -> Tensor | float:
    """Intersection over union of boxes given as ``(y0, x0, y1, x1)`` (PaLI's order).

    Plain sequences give a float; tensors ``(..., 4)`` broadcast and give a tensor ``(...)``.
    Empty or inverted boxes have zero area; two empty boxes have IoU 0.
    """
    as_float = not isinstance(box_a, Tensor) and not isinstance(box_b, Tensor)
    a, b = torch.as_tensor(box_a), torch.as_tensor(box_b)
    dtype = torch.promote_types(a.dtype, b.dtype)
    dtype = torch.float64 if as_float else torch.promote_types(dtype, torch.float32)
    a, b = a.to(dtype), b.to(device=a.device, dtype=dtype)
    if a.shape[-1] != 4 or b.shape[-1] != 4:
        raise ValueError("Boxes must have 4 coordinates (y0, x0, y1, x1) in the last dimension.")
    y0 = torch.maximum(a[..., 0], b[..., 0])
    x0 = torch.maximum(a[..., 1], b[..., 1])
    y1 = torch.minimum(a[..., 2], b[..., 2])
    x1 = torch.minimum(a[..., 3], b[..., 3])
    inter = (y1 - y0).clamp(min=0) * (x1 - x0).clamp(min=0)

    def area(box: Tensor) -> Tensor:
        return (box[..., 2] - box[..., 0]).clamp(min=0) * (box[..., 3] - box[..., 1]).clamp(min=0)

    union = area(a) + area(b) - inter
    out = torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(union))
    return out.item() if as_float else out
