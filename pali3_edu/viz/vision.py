"""Pictures for the vision transformer lesson: an image cut into patches, position-embedding
similarity, and two ShapesWorld shapes side by side.

    >>> show_patches(image, patch=8)             # the image with its patch grid, and the patch sequence
    >>> plot_posemb_similarity(vit)             # cosine similarity of each position to all others
    >>> posemb_neighbour_similarity(vit)        # (mean cosine to grid neighbours, to all other positions)
    >>> plot_shape_pair("circle", "hexagon")    # the two shapes at the same place, and where they differ
    >>> shape_pair_differences()                # every pair of shapes, most alike first
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


def posemb_neighbour_similarity(posemb: Any, grid: tuple[int, int] | None = None) -> tuple[float, float]:
    """How much a position embedding "knows" the grid: ``(neighbours, others)``, the mean cosine
    similarity between positions that are grid neighbours (up, down, left, right) and between all
    other pairs of distinct positions. A random embedding gives about 0 for both; an embedding
    that learned the 2-D layout gives ``neighbours`` clearly above ``others``.

    ``posemb``: ``(1, N, D)``, ``(N, D)`` or a :class:`~pali3_edu.vit.ViT`; ``grid`` defaults to square.
    """
    pe = posemb.position_embedding() if hasattr(posemb, "position_embedding") else posemb
    pe = torch.as_tensor(pe).detach().cpu().float()
    pe = pe.reshape(-1, pe.shape[-1])
    n = pe.shape[0]
    gh, gw = grid if grid is not None else square_grid(n)
    if gh * gw != n:
        raise ValueError(f"grid {gh}x{gw} does not hold the {n} positions of the embedding.")
    unit = torch.nn.functional.normalize(pe, dim=-1)
    sim = unit @ unit.T
    rows, cols = torch.arange(n) // gw, torch.arange(n) % gw
    steps = (rows[:, None] - rows[None, :]).abs() + (cols[:, None] - cols[None, :]).abs()
    return float(sim[steps == 1].mean()), float(sim[steps > 1].mean())


def render_shape_mask(shape: str, image_size: int = 64, size: str = "large", center: tuple[float, float] = (0.5, 0.5)):
    """Boolean ``(image_size, image_size)`` mask of one ShapesWorld shape drawn exactly as in the
    data set (the middle of the size's radius range)."""
    from pali3_edu.data.shapesworld import RADIUS, Scene, ShapeObject, render_masks

    radius = sum(RADIUS[size]) / 2
    obj = ShapeObject(shape, "red", size, center[0], center[1], radius)
    return render_masks(Scene(0, "train", image_size, [obj]), image_size)[0]


def plot_shape_pair(shape_a: str = "circle", shape_b: str = "hexagon", image_size: int = 64, patch: int = 8,
                    sizes: tuple[str, ...] = ("large", "small")):
    """For each size: the two shapes drawn at the same place and their difference (the pixels
    that only one of them covers), with the ViT's patch grid. The title of each difference says
    how many pixels differ out of how many the shapes cover. Returns ``(figure, rows)`` with
    ``rows[i] = {"size", "differ", "covered", "width"}`` (``width``: pixels across ``shape_a``)."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(len(sizes), 3, figsize=(7.5, 2.6 * len(sizes)), squeeze=False)
    rows = []
    for row, size in zip(axes, sizes):
        a, b = render_shape_mask(shape_a, image_size, size), render_shape_mask(shape_b, image_size, size)
        differ, covered = int((a ^ b).sum()), int((a | b).sum())
        rows.append({"size": size, "differ": differ, "covered": covered, "width": int(a.any(0).sum())})
        diff = np.zeros((*a.shape, 3))
        diff[a & ~b] = (0.9, 0.3, 0.2)   # only shape_a
        diff[b & ~a] = (0.2, 0.5, 0.9)   # only shape_b
        diff[a & b] = (0.75, 0.75, 0.75)
        for ax, img, title in zip(row, (a, b, diff), (f"{size} {shape_a}", f"{size} {shape_b}",
                                                     f"{differ} of {covered} pixels differ")):
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
            for k in range(patch, image_size, patch):
                ax.axhline(k - 0.5, color="tab:green", lw=0.5)
                ax.axvline(k - 0.5, color="tab:green", lw=0.5)
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{image_size}×{image_size} px, {patch}-px patches (green). Difference: red = only the "
                 f"{shape_a}, blue = only the {shape_b}, grey = both", fontsize=9)
    fig.tight_layout()
    return fig, rows


def shape_pair_differences(image_size: int = 64, size: str = "large") -> list[tuple[str, str, int, int]]:
    """Every pair of ShapesWorld shapes drawn at the same place and size: ``(shape_a, shape_b,
    differ, covered)``, the pixels only one of them covers and the pixels either covers, sorted
    from the most alike pair (smallest ``differ / covered``) to the least."""
    from itertools import combinations

    from pali3_edu.data.shapesworld import SHAPES

    masks = {shape: render_shape_mask(shape, image_size, size) for shape in SHAPES}
    rows = [(a, b, int((masks[a] ^ masks[b]).sum()), int((masks[a] | masks[b]).sum()))
            for a, b in combinations(SHAPES, 2)]
    return sorted(rows, key=lambda row: row[2] / row[3])
