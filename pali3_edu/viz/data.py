"""Pictures of the data: a grid of scenes with captions, boxes drawn on images, a scene browser.

    >>> show_scenes(ds, n=8)                           # matplotlib grid with captions
    >>> draw_boxes(image, [(0.1, 0.2, 0.5, 0.6)], ["circle"])   # PIL image with a labelled box
    >>> show_scene(ds[0])                              # one scene beside its captions and QA
    >>> scene_browser(ds)                              # ipywidgets: slider over scenes
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageDraw, ImageFont

BOX_COLORS = ("#ffffff", "#00e5ff", "#ff4081", "#c6ff00", "#ffab00", "#e040fb", "#18ffff", "#ff6e40")


def _as_pil(image: Any) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    import numpy as np

    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    return Image.fromarray(arr).convert("RGB")


def draw_boxes(
    image: Any,
    boxes: Sequence[Sequence[float]],
    labels: Sequence[str] | None = None,
    min_size: int = 256,
    width: int = 2,
) -> Image.Image:
    """Return a copy of ``image`` with ``boxes`` (``y0, x0, y1, x1`` in [0, 1]) and labels drawn.

    Small images are first enlarged (nearest neighbour) to at least ``min_size`` pixels so the
    labels stay readable. Boxes with negative coordinates (e.g. a missing ``word_box``) are skipped.
    """
    img = _as_pil(image)
    if min(img.size) < min_size:
        scale = -(-min_size // min(img.size))
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    else:
        img = img.copy()
    draw = ImageDraw.Draw(img)
    try:
        from pali3_edu.data.shapesworld import font_path

        font = ImageFont.truetype(font_path(), max(10, img.height // 24))
    except (OSError, ImportError):  # pragma: no cover - font missing: PIL's built-in one
        font = ImageFont.load_default()
    W, H = img.size
    for i, box in enumerate(boxes):
        y0, x0, y1, x1 = (float(v) for v in box)
        if min(y0, x0, y1, x1) < 0:
            continue
        color = BOX_COLORS[i % len(BOX_COLORS)]
        draw.rectangle([x0 * W, y0 * H, x1 * W - 1, y1 * H - 1], outline=color, width=width)
        if labels is not None and i < len(labels) and labels[i]:
            tx, ty = x0 * W + 2, max(0, y0 * H - font.size - 4)
            left, top, right, bottom = draw.textbbox((tx, ty), labels[i], font=font)
            draw.rectangle([left - 1, top - 1, right + 1, bottom + 1], fill="#000000")
            draw.text((tx, ty), labels[i], fill=color, font=font)
    return img


def _record_boxes(record: dict[str, Any]) -> tuple[list, list]:
    boxes, labels = [], []
    for o in record.get("objects") or []:
        boxes.append(o["box"])
        labels.append(f"{o['color']} {o['shape']}" if o.get("color") else o.get("label", ""))
    if record.get("word"):
        boxes.append(record["word_box"])
        labels.append(f'"{record["word"]}"')
    return boxes, labels


def _scene_title(record: dict[str, Any], width: int = 34) -> str:
    return "\n".join(textwrap.wrap(record.get("caption") or "", width))


def show_scenes(dataset: Any, n: int = 8, cols: int = 4, boxes: bool = False, start: int = 0):
    """Grid of the first ``n`` records (from ``start``) with their captions; returns the Figure.

    ``dataset`` is a ``datasets.Dataset`` (or a list of records) with ``image`` and ``caption``
    columns; ``boxes=True`` also draws each object's box. Each row of the grid is as tall as its
    longest caption needs, so a caption never runs into the picture above it.
    """
    import matplotlib.pyplot as plt

    n = min(n, len(dataset) - start)
    if n <= 0:
        raise ValueError(f"Nothing to show: the dataset has {len(dataset)} records, start={start}.")
    cols = min(cols, n)
    rows = -(-n // cols)
    records = [dataset[start + i] for i in range(n)]
    titles = [_scene_title(rec) for rec in records]
    lines = [max((t.count("\n") + 1 for t in titles[r * cols:(r + 1) * cols]), default=1) for r in range(rows)]
    line_in = 0.16  # inches per caption line at fontsize 8
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, sum(2.9 + line_in * k for k in lines)),
                             squeeze=False, layout="constrained",
                             gridspec_kw={"height_ratios": [2.9 + line_in * k for k in lines]})
    for ax in axes.flat:
        ax.axis("off")
    for i, (rec, title) in enumerate(zip(records, titles)):
        img = rec["image"]
        if boxes:
            img = draw_boxes(img, *_record_boxes(rec))
        ax = axes.flat[i]
        ax.imshow(img, interpolation="nearest")
        ax.set_title(title, fontsize=8)
    return fig


def _scene_html(rec: dict[str, Any]) -> str:
    """Seed, captions, word, questions and description of one record, as HTML."""
    import html

    parts = [f"<b>seed</b> {rec.get('seed', rec.get('id', ''))}"]
    parts += [f"<b>caption</b> {html.escape(c)}" for c in (rec.get("captions") or [rec.get("caption", "")])[:4]]
    if rec.get("word"):
        parts.append(f"<b>word</b> {html.escape(rec['word'])}")
    qa_rows = "".join(
        f"<tr><td>{html.escape(q['question'])}</td><td><b>{html.escape(q['answer'])}</b></td>"
        f"<td><i>{html.escape(q.get('kind', ''))}</i></td></tr>" for q in (rec.get("qa") or []))
    if qa_rows:
        parts.append(f"<table>{qa_rows}</table>")
    if rec.get("description"):
        parts.append(f"<p style='max-width:420px'>{html.escape(rec['description'])}</p>")
    return "<br>".join(parts)


def _scene_picture(rec: dict[str, Any], boxes: bool, image_px: int) -> Image.Image:
    """The record's image, enlarged (nearest neighbour) to ``image_px`` pixels, boxes drawn."""
    img = draw_boxes(rec["image"], *_record_boxes(rec), min_size=image_px) if boxes else _as_pil(rec["image"])
    return img.resize((image_px, image_px), Image.NEAREST) if img.size != (image_px, image_px) else img


def show_scene(record: dict[str, Any], boxes: bool = True, image_px: int = 256):
    """One record as a static figure: the image (with boxes) beside its captions and questions.

    This is what :func:`scene_browser` shows first, for notebook viewers that do not run widgets.
    """
    import matplotlib.pyplot as plt

    captions = (record.get("captions") or [record.get("caption", "")])[:4]
    qa = [f"{q['question']} → {q['answer']}" for q in (record.get("qa") or [])][:8]
    lines = [f"seed {record.get('seed', record.get('id', ''))}"] + [f"caption: {c}" for c in captions]
    if record.get("word"):
        lines.append(f"word: {record['word']}")
    lines += [""] + qa
    text = "\n".join(textwrap.fill(line, 70) if line else "" for line in lines)
    fig, (ax_img, ax_txt) = plt.subplots(1, 2, figsize=(10, 3.6), width_ratios=[1, 1.9], layout="constrained")
    ax_img.imshow(_scene_picture(record, boxes, image_px), interpolation="nearest")
    ax_img.set_aspect("equal")  # a square scene stays square, whatever the text beside it
    ax_img.axis("off")
    ax_txt.axis("off")
    ax_txt.text(0, 1, text, va="top", ha="left", fontsize=8.5, family="monospace", transform=ax_txt.transAxes)
    return fig


def scene_browser(dataset: Any, image_px: int = 256):
    """An ipywidgets explorer: a slider over records showing image + boxes, captions, QA.

    The first record is first displayed as a static figure (:func:`show_scene`), so something
    remains in a notebook viewer that does not run widgets. Returns the widget (display it as
    the last expression of a notebook cell). The picture keeps a fixed ``image_px`` square size
    next to a text panel of any length.
    """
    import io

    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    if len(dataset) == 0:
        raise ValueError("The dataset is empty: nothing to browse.")
    fig = show_scene(dataset[0], boxes=True, image_px=image_px)
    display(fig)
    plt.close(fig)

    slider = widgets.IntSlider(value=0, min=0, max=len(dataset) - 1, description="scene")
    show_boxes = widgets.Checkbox(value=True, description="boxes")
    px = f"{image_px}px"
    # A fixed box that neither grows nor shrinks: in an HBox the default (align-items: stretch)
    # would stretch the picture to the height of the text beside it.
    image_w = widgets.Image(format="png", layout=widgets.Layout(
        width=px, height=px, min_width=px, min_height=px, flex="0 0 auto", object_fit="contain"))
    text_w = widgets.HTML(layout=widgets.Layout(flex="1 1 auto", margin="0 0 0 12px"))

    def update(*_):
        rec = dataset[slider.value]
        buf = io.BytesIO()
        _scene_picture(rec, show_boxes.value, image_px).save(buf, format="PNG")
        image_w.value = buf.getvalue()
        text_w.value = _scene_html(rec)

    slider.observe(update, names="value")
    show_boxes.observe(update, names="value")
    update()
    row = widgets.HBox([image_w, text_w], layout=widgets.Layout(align_items="flex-start"))
    return widgets.VBox([widgets.HBox([slider, show_boxes]), row])
