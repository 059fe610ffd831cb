"""Plots for lesson 06: T5's relative position buckets and the attention masks."""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.transforms import offset_copy

from pali3_edu.encdec import causal_mask, relative_position_bucket


def plot_position_buckets(
    num_buckets: int = 32, max_distance: int = 128, span: int = 160, length: int = 24
) -> Figure:
    """Left: bucket id against relative position ``key - query`` for the encoder (bidirectional)
    and the decoder (causal). Right: the encoder's ``(query, key)`` bucket grid for a short
    sequence — every diagonal shares one bucket, hence one learned bias per head."""
    rel = torch.arange(-span, span + 1)
    enc = relative_position_bucket(rel, True, num_buckets, max_distance)
    dec = relative_position_bucket(rel, False, num_buckets, max_distance)
    fig, (ax, ax_grid) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1.6, 1]})
    ax.step(rel, enc, where="mid", label="encoder (bidirectional)")
    ax.step(rel, dec, where="mid", label="decoder (causal)", alpha=0.8)
    half = num_buckets // 4  # exact range of the bidirectional encoder
    ax.axvspan(-half + 0.5, half - 0.5, color="grey", alpha=0.15, label=f"exact buckets (|rel| < {half})")
    for x in (-max_distance, max_distance):
        ax.axvline(x, color="k", ls=":", lw=1)
    ax.set(xlabel="relative position  key − query", ylabel="bucket id",
           title=f"{num_buckets} buckets, log-spaced up to ±{max_distance}")
    ax.legend(fontsize=8, loc="center right")

    pos = torch.arange(length)
    grid = relative_position_bucket(pos[None, :] - pos[:, None], True, num_buckets, max_distance)
    im = ax_grid.imshow(grid, cmap="viridis")
    ax_grid.set(xlabel="key position", ylabel="query position", title="encoder bucket per (query, key)")
    fig.colorbar(im, ax=ax_grid, fraction=0.046)
    fig.tight_layout()
    return fig


def plot_attention_mask(
    query_length: int = 8,
    key_length: int | None = None,
    padding: torch.Tensor | None = None,
    ax: Axes | None = None,
    title: str | None = None,
    legend: bool = True,
) -> Figure:
    """Show which keys each query may attend to (dark = allowed; ``legend`` names the two
    colours below the plot).

    - ``padding`` given (``(keys,)`` 1 = real token): the encoder's mask, every query sees
      every real key.
    - otherwise the decoder's causal mask; with ``key_length > query_length`` the queries are
      the newest positions after a cached past (the KV-cache case).
    """
    key_length = key_length or query_length
    if padding is not None:
        allowed = padding.bool()[None, :].expand(query_length, -1)
        title = title or "encoder: padding mask"
    else:
        allowed = causal_mask(query_length, key_length)
        title = title or ("decoder: causal mask" if key_length == query_length
                          else f"decoder step: {query_length} new vs {key_length} keys")
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(0.35 * key_length + 1.5, 3.6 if legend else 0),
                                        0.35 * query_length + (1.7 if legend else 1.2)))
    cmap, vmax = plt.get_cmap("Blues"), 1.3
    ax.imshow(allowed.float(), cmap=cmap, vmin=0, vmax=vmax)
    ax.set(xlabel="key position", ylabel="query position", title=title)
    ax.set_xticks(range(key_length))
    # label queries by their absolute position (after a cached past they are the last ones)
    offset = key_length - query_length if padding is None else 0
    ax.set_yticks(range(query_length), [str(offset + i) for i in range(query_length)])
    if legend:
        masked = "masked (padding)" if padding is not None else "masked (a later position)"
        handles = [Patch(facecolor=cmap(1 / vmax), edgecolor="grey", label="may attend"),
                   Patch(facecolor=cmap(0.0), edgecolor="grey", label=masked)]
        # a fixed distance below the axes (under the tick labels and the x label), whatever their height
        below = offset_copy(ax.transAxes, fig=ax.figure, y=-34, units="points")
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0), bbox_transform=below, ncol=2,
                  fontsize=8, frameon=False, handlelength=1.2, columnspacing=1.0)
    if fig is not None:
        fig.tight_layout()
        return fig
    return ax.figure


__all__ = ["plot_attention_mask", "plot_position_buckets"]
