"""Pictures of a PaLI-3 evaluation: what the model was asked, what it said, what was right.

    >>> report = evaluate(model, "val", n=100)
    >>> show_predictions(report, report.images, task="refer", only="wrong")   # matplotlib grid
    >>> prediction_browser(report, report.images)                             # ipywidgets explorer

Boxes are drawn for ``detect`` and ``refer``: predicted boxes in red, true boxes in green.
Location tokens are shortened to ``[box]`` in the texts.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from typing import Any

from pali3_edu.data.tasks import parse_detection
from pali3_edu.viz import to_hwc

PRED_COLOR, TRUE_COLOR = "#ff1744", "#00e676"
_BOX_RE = re.compile(r"(?:<loc[0-9]{4}>){4}")
ONLY = ("all", "right", "wrong")


def short_text(text: str, width: int = 34) -> str:
    """Four ``<loc>`` tokens → ``[box]``, wrapped to ``width`` characters."""
    return "\n".join(textwrap.wrap(_BOX_RE.sub("[box]", text), width)) or "''"


def select(report: Any, task: str | None = None, only: str = "all") -> list[dict[str, Any]]:
    """The report's predictions of ``task``, all / right / wrong ones. With ``task=None`` every
    task's, interleaved (first of each task, then second of each, …)."""
    if only not in ONLY:
        raise ValueError(f"only must be one of {ONLY}, got {only!r}")
    tasks = {p["task"] for p in report.predictions}
    if task is not None and task not in tasks:
        raise ValueError(f"The report has no {task!r} predictions; it has: {', '.join(sorted(tasks))}.")
    chosen = [p for p in report.predictions if (task is None or p["task"] == task)
              and (only == "all" or p["correct"] == (only == "right"))]
    if task is None:  # take turns between tasks, so a page shows every task
        rank: dict[str, int] = {}
        order = []
        for i, p in enumerate(chosen):
            rank[p["task"]] = rank.get(p["task"], -1) + 1
            order.append((rank[p["task"]], i))
        chosen = [chosen[i] for _, i in sorted(order)]
    return chosen


def _draw(ax: Any, image: Any, pred: dict[str, Any], fontsize: float = 7.5) -> None:
    from matplotlib.patches import Rectangle

    img = to_hwc(image)
    h, w = img.shape[:2]
    ax.imshow(img, interpolation="nearest")
    if pred["task"] in ("detect", "refer"):
        for text, color, style in ((pred["target"], TRUE_COLOR, "-"), (pred["prediction"], PRED_COLOR, "--")):
            for y0, x0, y1, x1 in parse_detection(text).boxes:
                ax.add_patch(Rectangle((x0 * w - 0.5, y0 * h - 0.5), (x1 - x0) * w, (y1 - y0) * h,
                                       fill=False, edgecolor=color, linewidth=1.6, linestyle=style))
    mark = "✓" if pred["correct"] else "✗"
    ax.set_title(short_text(pred["prompt"]), fontsize=fontsize)
    ax.set_xlabel(f"{mark} {short_text(pred['prediction'])}\ntrue: {short_text(pred['target'])}",
                  fontsize=fontsize, color="#1b5e20" if pred["correct"] else "#b71c1c")
    ax.set_xticks([])
    ax.set_yticks([])


def show_predictions(report: Any, images: Sequence[Any] | None = None, task: str | None = None, k: int = 8,
                     only: str = "all", cols: int = 4, start: int = 0):
    """A grid of ``k`` predictions (from ``start``) with prompt (above), prediction and target
    (below, green if right, red if wrong), boxes drawn for detect/refer. ``images`` is indexed by
    each prediction's ``image`` (default ``report.images``). Returns the Figure."""
    import matplotlib.pyplot as plt

    images = report.images if images is None else images
    if images is None:
        raise ValueError("No images: pass the evaluated images (report.images).")
    chosen = select(report, task, only)[start:start + k]
    if not chosen:
        raise ValueError(f"Nothing to show for task={task!r}, only={only!r}, start={start}.")
    cols = min(cols, len(chosen))
    rows = -(-len(chosen) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.1 * cols, 3.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, pred in zip(axes.flat, chosen):
        ax.axis("on")
        _draw(ax, images[pred["image"]], pred)
    fig.tight_layout()
    return fig


def prediction_browser(report: Any, images: Sequence[Any] | None = None, page: int = 8):
    """An ipywidgets explorer: task dropdown, all/right/wrong toggle, slider over the examples.

    The first page is first displayed as a static matplotlib figure, so something remains in a
    notebook viewer that does not run widgets. Returns the widget (display it last in a cell).
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import clear_output, display

    images = report.images if images is None else images
    fig = show_predictions(report, images, k=page)
    display(fig)
    plt.close(fig)

    tasks = list(dict.fromkeys(p["task"] for p in report.predictions))
    task_w = widgets.Dropdown(options=tasks, value=tasks[0], description="task")
    only_w = widgets.ToggleButtons(options=list(ONLY), value="all")
    slider = widgets.IntSlider(value=0, min=0, max=0, description="example")
    out = widgets.Output()

    def update(*_: Any) -> None:
        chosen = select(report, task_w.value, only_w.value)
        slider.max = max(len(chosen) - 1, 0)
        with out:
            clear_output(wait=True)
            if not chosen:
                print(f"No {only_w.value} {task_w.value} predictions.")
                return
            pred = chosen[min(slider.value, len(chosen) - 1)]
            fig, ax = plt.subplots(figsize=(4.2, 5.0))
            _draw(ax, images[pred["image"]], pred, fontsize=10)
            fig.tight_layout()
            display(fig)
            plt.close(fig)

    for w in (task_w, only_w, slider):
        w.observe(update, names="value")
    update()
    return widgets.VBox([widgets.HBox([task_w, only_w]), slider, out])


__all__ = ["prediction_browser", "select", "short_text", "show_predictions"]
