"""Seeing the UL2 denoisers: coloured inputs/targets, span-length histograms, an explorer widget.

- :func:`corruption_html` renders one corruption (original, inputs, targets) as HTML, each noise
  span and its sentinel in the same colour; :func:`plot_corruption` draws the same rows
  (:func:`corruption_rows`) with matplotlib;
- :func:`denoiser_explorer` wraps it in ipywidgets (denoiser, mean span, density, seed);
- :func:`plot_span_length_histograms` shows how span lengths are spread for each denoiser.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence

import torch

from pali3_edu.ul2 import (
    UL2_DENOISERS,
    Denoiser,
    apply_noise_mask,
    prefix_lm,
    random_spans_noise_mask,
    span_counts,
    span_lengths,
)

PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
           "#9a6324", "#469990", "#800000", "#808000", "#000075")
_BOX = ("display:inline-block;margin:1px;padding:1px 4px;border-radius:4px;"
        "font-family:monospace;font-size:13px;")


def _piece(tokenizer, i: int) -> str:
    text = tokenizer.id_to_token(int(i)) if hasattr(tokenizer, "id_to_token") else str(int(i))
    return text.replace("▁", "·")


def _box(text: str, colour: str | None, bold: bool = False) -> str:
    style = _BOX + (f"background:{colour};color:white;" if colour else "background:#eee;")
    if bold:
        style += "font-weight:bold;border:2px solid #222;"
    return f'<span style="{style}">{html.escape(text)}</span>'


# One token as drawn: (text, background colour or None, bold)
Piece = tuple[str, "str | None", bool]


def corruption_rows(
    tokens: torch.Tensor,
    mask: torch.Tensor | None,
    tokenizer,
    mode_token: str = "",
    split: int | None = None,
) -> tuple[str, list[tuple[str, list[Piece]]]]:
    """``(summary, rows)`` for one example: the rows ``original``, ``inputs`` and ``targets``,
    each a list of ``(token text, colour, bold)``; each noise span and its sentinel share a
    colour. Arguments as in :func:`corruption_html`."""
    tokens = torch.as_tensor(tokens)
    rows: list[tuple[str, list[Piece]]] = []
    if mask is not None:
        mask = mask.bool()
        prev = torch.cat([mask.new_zeros(1), mask[:-1]])
        span_of = (mask & ~prev).cumsum(0) - 1
        colour = [PALETTE[int(s) % len(PALETTE)] if m else None for s, m in zip(span_of, mask)]
        rows.append(("original", [(_piece(tokenizer, t), c, False) for t, c in zip(tokens, colour)]))
        inputs, targets = apply_noise_mask(tokens, mask, tokenizer.sentinel_id)
        sentinel_colour = {tokenizer.sentinel_id(i): PALETTE[i % len(PALETTE)]
                           for i in range(int((mask & ~prev).sum()))}

        def render(ids: torch.Tensor, in_targets: bool) -> list[Piece]:
            out: list[Piece] = []
            current = None
            for t in ids.tolist():
                if t in sentinel_colour:
                    current = sentinel_colour[t]
                    out.append((_piece(tokenizer, t), current, True))
                else:
                    out.append((_piece(tokenizer, t), current if in_targets else None, False))
            return out

        inputs_pieces, targets_pieces = render(inputs, False), render(targets, True)
        n_noise, n_spans = int(mask.sum()), int((mask & ~prev).sum())
        summary = (f"{len(tokens)} tokens → {n_noise} noise tokens "
                   f"({n_noise / len(tokens):.0%}) in {n_spans} spans "
                   f"(mean {n_noise / max(n_spans, 1):.1f})")
    else:
        if split is None:
            raise ValueError("Give a noise mask (span corruption) or a split point (prefix LM).")
        rows.append(("original", [(_piece(tokenizer, t), None if k < split else PALETTE[2], False)
                                  for k, t in enumerate(tokens)]))
        inputs_pieces = [(_piece(tokenizer, t), None, False) for t in tokens[:split]]
        targets_pieces = [(_piece(tokenizer, t), PALETTE[2], False) for t in tokens[split:]]
        summary = f"{len(tokens)} tokens → prefix of {split}, the decoder writes the other " \
                  f"{len(tokens) - split}"
    mode: list[Piece] = [(mode_token, "#555", True)] if mode_token else []
    eos: list[Piece] = [("</s>", "#999", False)]
    rows.append(("inputs", mode + inputs_pieces + eos))
    rows.append(("targets", targets_pieces + eos))
    return summary, rows


def corruption_html(
    tokens: torch.Tensor,
    mask: torch.Tensor | None,
    tokenizer,
    mode_token: str = "",
    split: int | None = None,
) -> str:
    """HTML for one example: the original with noise spans coloured, then inputs and targets.

    Give a noise ``mask`` ``(L,)`` for span corruption, or ``split`` (and ``mask=None``) for the
    S-denoiser's prefix/rest split. ``tokenizer`` needs ``id_to_token`` and ``sentinel_id``.
    """
    return _rows_html(*corruption_rows(tokens, mask, tokenizer, mode_token, split))


def _rows_html(summary: str, rows: Sequence[tuple[str, Sequence[Piece]]]) -> str:
    body = "".join(
        f'<tr><td style="vertical-align:top;padding-right:8px;"><b>{name}</b></td>'
        f'<td style="text-align:left;">{"".join(_box(*p) for p in pieces)}</td></tr>'
        for name, pieces in rows
    )
    return (f'<div><div style="margin-bottom:4px;color:#444;">{html.escape(summary)}</div>'
            f"<table>{body}</table></div>")


def plot_corruption(
    summary: str,
    rows: Sequence[tuple[str, Sequence[Piece]]],
    title: str = "",
    width: int = 100,
):
    """The rows of :func:`corruption_rows` drawn with matplotlib (a static picture for notebook
    viewers that run neither widgets nor styled HTML): one coloured box per token, wrapped at
    ``width`` characters. Returns the figure."""
    import matplotlib.pyplot as plt

    label_w = 10  # characters for the row labels
    layout: list[tuple[float, float, Piece | str]] = []  # (x in characters, line, piece or label)
    line = 0.0
    for name, pieces in rows:
        layout.append((0.0, line, name))
        x = float(label_w)
        for piece in pieces:
            w = len(piece[0]) + 1.2
            if x + w > width and x > label_w:
                line, x = line + 1, float(label_w)
            layout.append((x, line, piece))
            x += w
        line += 1.5  # half a blank line between rows
    lines = line - 1.5 + 0.6  # the last line's centre, and room below it
    char_in = 0.085  # inches per character of 9-pt monospace, with the box padding
    fig = plt.figure(figsize=(width * char_in, 0.35 + 0.24 * lines + (0.3 if title else 0) + 0.25))
    ax = fig.add_axes([0.0, 0.0, 1.0, 1.0])
    ax.set_xlim(-0.5, width + 0.5)
    top = 1.8 if title else 1.2
    ax.set_ylim(lines + 0.2, -top)
    ax.axis("off")
    if title:
        ax.text(0, -1.4, title, fontsize=10, fontweight="bold", va="center")
    ax.text(0, -0.6, summary, fontsize=8.5, color="#444", va="center")
    for x, ln, item in layout:
        if isinstance(item, str):
            ax.text(x, ln, item, fontsize=9, fontweight="bold", va="center", family="monospace")
            continue
        text, colour, bold = item
        ax.text(x, ln, text, fontsize=9, va="center", family="monospace",
                color="white" if colour else "black", fontweight="bold" if bold else "normal",
                bbox={"boxstyle": "round,pad=0.25", "fc": colour or "#eeeeee",
                      "ec": "#222222" if bold else "none", "lw": 1.2 if bold else 0})
    return fig


def denoise_rows(tokens: torch.Tensor, denoiser: Denoiser, tokenizer, seed: int = 0):
    """:func:`corruption_rows` of one denoiser applied to ``tokens`` with a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    if denoiser.kind == "S":
        prefix, _ = prefix_lm(tokens, g)
        return corruption_rows(tokens, None, tokenizer, denoiser.mode_token, split=len(prefix))
    mask = random_spans_noise_mask(len(tokens), denoiser.noise_density, denoiser.mean_span, g)
    return corruption_rows(tokens, mask, tokenizer, denoiser.mode_token)


def denoise_for_display(
    tokens: torch.Tensor, denoiser: Denoiser, tokenizer, seed: int = 0
) -> str:
    """HTML of one denoiser applied to ``tokens`` with a seeded generator."""
    return _rows_html(*denoise_rows(tokens, denoiser, tokenizer, seed))


def denoiser_explorer(sentence: str, tokenizer, denoisers: Sequence[Denoiser] = UL2_DENOISERS):
    """An ipywidgets explorer: pick a denoiser (or "custom" with mean-span and density
    sliders) and a seed, and see the inputs and targets with each span coloured.

    The first state (the first denoiser, seed 0) is first displayed as a static figure
    (:func:`plot_corruption`), so something remains in a notebook viewer that does not run
    widgets. Returns the widget (display it, or let the notebook show it as the cell's value).
    """
    import ipywidgets as w
    import matplotlib.pyplot as plt
    from IPython.display import display

    tokens = torch.tensor(tokenizer.encode(sentence, add_eos=False))
    if len(tokens) < 2:
        raise ValueError("Give a sentence of at least two tokens.")
    fig = plot_corruption(*denoise_rows(tokens, denoisers[0], tokenizer, seed=0),
                          title=f"{denoisers[0].name}, seed 0 (the explorer's first state)")
    display(fig)
    plt.close(fig)
    names = [d.name for d in denoisers] + ["custom"]
    choice = w.Dropdown(options=names, value=names[0], description="denoiser")
    mean_span = w.FloatSlider(value=3.0, min=1.0, max=64.0, step=1.0, description="mean span")
    density = w.FloatSlider(value=0.15, min=0.05, max=0.95, step=0.05, description="density")
    seed = w.IntSlider(value=0, min=0, max=50, description="seed")
    out = w.HTML()

    def update(*_) -> None:
        if choice.value == "custom":
            d = Denoiser("custom", "X", mean_span.value, density.value)
            mean_span.disabled = density.disabled = False
        else:
            d = denoisers[names.index(choice.value)]
            mean_span.disabled = density.disabled = True
            if d.kind != "S":
                mean_span.value, density.value = float(d.mean_span), float(d.noise_density)
        out.value = denoise_for_display(tokens, d, tokenizer, seed.value)

    for widget in (choice, mean_span, density, seed):
        widget.observe(update, names="value")
    update()
    return w.VBox([w.HBox([choice, seed]), w.HBox([mean_span, density]), out])


def plot_span_length_histograms(
    denoisers: Sequence[Denoiser] = UL2_DENOISERS,
    length: int = 512,
    samples: int = 200,
    generator: torch.Generator | None = None,
    mask_fn: Callable[..., torch.Tensor] = random_spans_noise_mask,
):
    """Histograms of noise-span lengths (span-corruption denoisers) over ``samples`` masks of
    ``length`` tokens, with the configured mean as a dashed line. Returns the figure."""
    import matplotlib.pyplot as plt

    g = generator or torch.Generator().manual_seed(0)
    ds = [d for d in denoisers if d.kind != "S"]
    cols = min(3, len(ds))
    rows = -(-len(ds) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax, d in zip(axes.flat, ds):
        lengths = torch.cat([span_lengths(mask_fn(length, d.noise_density, d.mean_span, g))
                             for _ in range(samples)])
        n_noise, n_spans = span_counts(length, d.noise_density, d.mean_span)
        bins = torch.arange(0.5, float(lengths.max()) + 1.5, max(1, int(lengths.max()) // 40))
        ax.hist(lengths.numpy(), bins=bins.numpy(), color="#4363d8", alpha=0.8)
        ax.axvline(d.mean_span, color="k", ls="--", label=f"μ = {d.mean_span:g}")
        ax.set_title(f"{d.name}: {n_spans} spans, {n_noise} noise tokens", fontsize=9)
        ax.set_xlabel("span length")
        ax.set_ylabel(f"spans ({samples} masks)")
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(ds):]:
        ax.axis("off")
    fig.suptitle(f"Noise-span lengths, L = {length}, {samples} masks each")
    fig.tight_layout()
    return fig
