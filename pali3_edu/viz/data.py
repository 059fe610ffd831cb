"""Pictures of the data: a grid of scenes with captions, boxes drawn on images, a scene browser.

    >>> show_scenes(ds, n=8)                           # matplotlib grid with captions
    >>> draw_boxes(image, [(0.1, 0.2, 0.5, 0.6)], ["circle"])   # PIL image with a labelled box
    >>> scene_browser(ds)                              # ipywidgets: slider over scenes
"""

from __future__ import annotations

import textwrap
from typing import Any, Sequence

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
    except Exception:  # pragma: no cover - font missing: PIL's built-in one
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
            l, t, r, b = draw.textbbox((tx, ty), labels[i], font=font)
            draw.rectangle([l - 1, t - 1, r + 1, b + 1], fill="#000000")
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


def show_scenes(dataset: Any, n: int = 8, cols: int = 4, boxes: bool = False, start: int = 0):
    """Grid of the first ``n`` records (from ``start``) with their captions; returns the Figure.

    ``dataset`` is a ``datasets.Dataset`` (or a list of records) with ``image`` and ``caption``
    columns; ``boxes=True`` also draws each object's box.
    """
    import matplotlib.pyplot as plt

    n = min(n, len(dataset) - start)
    if n <= 0:
        raise ValueError(f"Nothing to show: the dataset has {len(dataset)} records, start={start}.")
    cols = min(cols, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        rec = dataset[start + i]
        img = rec["image"]
        if boxes:
            img = draw_boxes(img, *_record_boxes(rec))
        ax = axes.flat[i]
        ax.imshow(img, interpolation="nearest")
        title = rec.get("caption") or ""
        ax.set_title("\n".join(textwrap.wrap(title, 32)), fontsize=8)
    fig.tight_layout()
    return fig


def scene_browser(dataset: Any, image_px: int = 256):
    """An ipywidgets explorer: a slider over records showing image + boxes, captions, QA.

    Returns the widget (display it as the last expression of a notebook cell).
    """
    import html

    import ipywidgets as widgets

    slider = widgets.IntSlider(value=0, min=0, max=len(dataset) - 1, description="scene")
    show_boxes = widgets.Checkbox(value=True, description="boxes")
    image_w = widgets.Image(format="png", width=image_px, height=image_px)
    text_w = widgets.HTML()

    def update(*_):
        rec = dataset[slider.value]
        img = rec["image"]
        img = draw_boxes(img, *_record_boxes(rec)) if show_boxes.value else _as_pil(img).resize(
            (image_px, image_px), Image.NEAREST)
        import io

        buf = io.BytesIO()
        img.save(buf, format="PNG")
        image_w.value = buf.getvalue()
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
        text_w.value = "<br>".join(parts)

    slider.observe(update, names="value")
    show_boxes.observe(update, names="value")
    update()
    return widgets.VBox([widgets.HBox([slider, show_boxes]), widgets.HBox([image_w, text_w])])
