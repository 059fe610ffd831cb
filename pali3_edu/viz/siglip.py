"""Pictures for the SigLIP lesson: training curves, the image–text similarity matrix, retrieval
results (static and as an ipywidgets browser).

    >>> plot_training(history)                           # loss, temperature t and bias b
    >>> plot_similarity_matrix(sim[:8, :8], images[:8], captions[:8])
    >>> show_retrieval(sim, images, captions, query=3, direction="image→text")
    >>> retrieval_browser(sim, images, captions)         # pick a query, see the top k
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from pali3_edu.viz import to_hwc

Direction = Literal["image→text", "text→image"]


def plot_training(history: Any, title: str = "SigLIP training"):
    """Loss (left) and the learned temperature ``t`` and bias ``b`` (right) against the step."""
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.2))
    ax1.plot(history.steps, history.losses)
    ax1.set(xlabel="step", ylabel="loss", title=title)
    ax1.grid(alpha=0.3)
    if history.column("t"):
        ax2.plot(history.column("step")[: len(history.column("t"))], history.column("t"), label="t = exp(t')")
        ax2.plot(history.column("step")[: len(history.column("b"))], history.column("b"), label="b")
        ax2.axhline(0, color="gray", lw=0.5)
        ax2.set(xlabel="step", title="temperature and bias")
        ax2.legend()
        ax2.grid(alpha=0.3)
    else:
        ax2.axis("off")
    fig.tight_layout()
    return fig


def plot_similarity_matrix(
    similarity: torch.Tensor,
    images: Sequence[Any] | torch.Tensor,
    captions: Sequence[str],
    title: str = "cosine similarity: captions (rows) × images (columns)",
    annotate: bool = True,
):
    """The CLIP/SigLIP picture: thumbnails across the top, captions down the side, and each cell
    coloured by the similarity of that caption and that image. Correct pairs lie on the diagonal.

    ``similarity`` is ``(images, captions)`` as returned by ``pali3_edu.recipes.siglip.similarity_matrix``
    (it is drawn transposed so captions read as rows); keep it small (≤ 10 × 10).
    """
    import matplotlib.pyplot as plt

    sim = similarity.detach().cpu().float().T.numpy()  # (captions, images)
    n_txt, n_img = sim.shape
    if len(images) != n_img or len(captions) != n_txt:
        raise ValueError(
            f"similarity is {(n_img, n_txt)} (images, captions) but got {len(images)} images and "
            f"{len(captions)} captions."
        )
    fig = plt.figure(figsize=(2.2 + 0.9 * n_img + 3.0, 1.2 + 0.9 * n_txt))
    grid = fig.add_gridspec(n_txt + 1, n_img, height_ratios=[1.0] + [1.0] * n_txt,
                            left=0.42, right=0.98, top=0.9, bottom=0.03, hspace=0.05, wspace=0.05)
    for j in range(n_img):
        ax = fig.add_subplot(grid[0, j])
        ax.imshow(to_hwc(images[j]), interpolation="nearest")
        ax.axis("off")
    ax = fig.add_subplot(grid[1:, :])
    vmax = np.abs(sim).max() or 1.0
    ax.imshow(sim, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
    ax.set_xticks([])
    ax.set_yticks(range(n_txt))
    ax.set_yticklabels([textwrap.shorten(c, 60, placeholder="…") for c in captions], fontsize=8)
    if annotate:
        for i in range(n_txt):
            for j in range(n_img):
                ax.text(j, i, f"{sim[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        fontweight="bold" if i == j else "normal",
                        color="white" if abs(sim[i, j]) > 0.6 * vmax else "black")
    fig.suptitle(title, fontsize=10)
    return fig


def _correct(relevant: torch.Tensor | None, q: int, item: int) -> bool:
    return bool(relevant[q, item]) if relevant is not None else q == item


def show_retrieval(
    similarity: torch.Tensor,
    images: Sequence[Any] | torch.Tensor,
    captions: Sequence[str],
    query: int,
    direction: Direction = "image→text",
    k: int = 5,
    relevant: torch.Tensor | None = None,
):
    """The top ``k`` results of one query, with their similarity; ✓ marks a correct result.

    ``similarity`` is ``(images, captions)``; ``relevant`` an optional ``(images, captions)`` bool
    matrix of correct pairs (default: the diagonal).
    """
    import matplotlib.pyplot as plt

    sim = similarity.detach().cpu().float()
    if direction not in ("image→text", "text→image"):
        raise ValueError(f"direction must be 'image→text' or 'text→image', got {direction!r}")
    if direction == "image→text":
        scores, top = sim[query].topk(min(k, sim.shape[1]))
        fig = plt.figure(figsize=(9, 0.5 + 0.45 * k + 0.5))
        ax = fig.add_axes([0.01, 0.05, 0.22, 0.85])
        ax.imshow(to_hwc(images[query]), interpolation="nearest")
        ax.set_title(f"query image {query}", fontsize=9)
        ax.axis("off")
        ax = fig.add_axes([0.26, 0.05, 0.73, 0.85])
        ax.axis("off")
        ax.text(0, 1.0, f"true caption: {captions[query]}", fontsize=9, style="italic", va="top",
                transform=ax.transAxes)
        for r, (s, j) in enumerate(zip(scores.tolist(), top.tolist())):
            mark = "✓" if _correct(relevant, query, j) else "✗"
            ax.text(0, 0.85 - r * 0.8 / max(k, 1), f"{r + 1}. {mark} {s:+.3f}  {captions[j]}", fontsize=9,
                    va="top", color="green" if mark == "✓" else "black", transform=ax.transAxes)
        return fig
    rel_t = relevant.T if relevant is not None else None
    scores, top = sim[:, query].topk(min(k, sim.shape[0]))
    fig, axes = plt.subplots(1, len(top), figsize=(1.9 * len(top), 2.6))
    axes = np.atleast_1d(axes)
    for r, (ax, s, i) in enumerate(zip(axes, scores.tolist(), top.tolist())):
        ax.imshow(to_hwc(images[i]), interpolation="nearest")
        ok = _correct(rel_t, query, i)
        ax.set_title(f"{r + 1}. {'✓' if ok else '✗'} {s:+.3f}", fontsize=9, color="green" if ok else "black")
        ax.axis("off")
    fig.suptitle(f"query: “{textwrap.shorten(captions[query], 90, placeholder='…')}”", fontsize=10)
    fig.tight_layout()
    return fig


def retrieval_browser(
    similarity: torch.Tensor,
    images: Sequence[Any] | torch.Tensor,
    captions: Sequence[str],
    k: int = 5,
    relevant: torch.Tensor | None = None,
):
    """An ipywidgets explorer: choose image→text or text→image and a query, see the top ``k``.

    Arguments as in :func:`show_retrieval`. The first state (image→text, query 0) is first
    displayed as a static figure, so something remains in a notebook viewer that does not run
    widgets. Returns the widget (display it as a cell's last line).
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    fig = show_retrieval(similarity, images, captions, 0, "image→text", k, relevant)
    display(fig)
    plt.close(fig)

    n = similarity.shape[0]
    direction = widgets.ToggleButtons(options=["image→text", "text→image"], description="direction")
    query = widgets.IntSlider(value=0, min=0, max=n - 1, description="query")
    topk = widgets.IntSlider(value=k, min=1, max=min(10, n), description="top k")
    label = widgets.HTML()
    out = widgets.Output()

    def redraw(*_):
        label.value = f"<i>{captions[query.value]}</i>"
        with out:
            out.clear_output(wait=True)
            fig = show_retrieval(similarity, images, captions, query.value, direction.value, topk.value, relevant)
            display(fig)
            plt.close(fig)

    for w in (direction, query, topk):
        w.observe(redraw, names="value")
    redraw()
    return widgets.VBox([direction, widgets.HBox([query, topk]), label, out])
