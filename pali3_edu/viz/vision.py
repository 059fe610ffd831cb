"""Pictures for the vision transformer lesson: an image cut into patches, position-embedding similarity.

    >>> show_patches(image, patch=8)             # the image with its patch grid, and the patch sequence
    >>> plot_posemb_similarity(vit)             # cosine similarity of each position to all others
"""

from __future__ import annotations

import math
from typing import Any

import torch

from pali3_edu.vit import square_grid
from pali3_edu.viz import to_hwc


def show_patches(image: Any, patch: int, max_patches: int = 64, title: str | None = None):
    """Left: the image with its ``patch × patch`` grid, patches numbered in sequence order.
    Right: the first ``max_patches`` patches as the sequence the transformer reads. Returns the figure."""
    import matplotlib.pyplot as plt

    img = to_hwc(image)
    h, w = img.shape[:2]
    if h % patch or w % patch:
        raise ValueError(f"Image {h}x{w} is not divisible by patch {patch}.")
    gh, gw = h // patch, w // patch
    n = min(gh * gw, max_patches)
    cols = min(n, 16)
    rows = math.ceil(n / cols)
    fig = plt.figure(figsize=(3.5 + cols * 0.5, max(3.2, rows * 0.7 + 0.8)))
    grid = fig.add_gridspec(rows, cols + 8)
    ax = fig.add_subplot(grid[:, :7])
    ax.imshow(img, interpolation="nearest")
    for k in range(1, gh):
        ax.axhline(k * patch - 0.5, color="white", lw=0.8)
    for k in range(1, gw):
        ax.axvline(k * patch - 0.5, color="white", lw=0.8)
    if gh * gw <= 64:
        for i in range(gh):
            for j in range(gw):
                ax.text(j * patch + 1, i * patch + 1, str(i * gw + j), color="yellow", fontsize=7, va="top")
    ax.set_title(title or f"{h}x{w} image, {gh}x{gw} = {gh * gw} patches of {patch}x{patch}", fontsize=9)
    ax.axis("off")
    for k in range(n):
        i, j = divmod(k, gw)
        sub = fig.add_subplot(grid[k // cols, 8 + k % cols])
        sub.imshow(img[i * patch:(i + 1) * patch, j * patch:(j + 1) * patch], interpolation="nearest")
        sub.set_xticks([])
        sub.set_yticks([])
        sub.set_title(str(k), fontsize=6, pad=1)
    fig.suptitle("patch sequence (row by row) →", x=0.75, fontsize=9)
    return fig


def plot_posemb_similarity(posemb: Any, grid: tuple[int, int] | None = None, title: str | None = None):
    """Cosine similarity of each position's embedding to every other position, one small map per
    position laid out on the patch grid (as in the ViT paper). ``posemb``: ``(1, N, D)``, ``(N, D)``
    or a :class:`~pali3_edu.vit.ViT` (its position embedding at the native grid, learned or
    sincos). Returns the figure."""
    import matplotlib.pyplot as plt

    pe = posemb.position_embedding() if hasattr(posemb, "position_embedding") else posemb
    pe = torch.as_tensor(pe).detach().cpu().float()
    pe = pe.reshape(-1, pe.shape[-1])
    n = pe.shape[0]
    if grid is None:
        grid = square_grid(n)
    gh, gw = grid
    unit = torch.nn.functional.normalize(pe, dim=-1)
    sim = (unit @ unit.T).reshape(n, gh, gw).numpy()
    fig, axes = plt.subplots(gh, gw, figsize=(0.6 * gw + 1.2, 0.6 * gh + 0.6), squeeze=False)
    low = float(sim.min())  # one colour scale for all tiles, stretched to the values present
    for k in range(n):
        ax = axes[k // gw][k % gw]
        im = ax.imshow(sim[k], vmin=low, vmax=1.0, cmap="viridis")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes, shrink=0.7, label="cosine similarity")
    fig.suptitle(title or "position-embedding similarity (each tile: one position vs all)", fontsize=9)
    return fig
