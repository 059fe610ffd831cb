"""Linear probes on frozen patch tokens: what does each visual token know about its own patch?

PaLI-3's language model sees an image only through the ViT's patch tokens, so whatever a task
needs (where the objects are, their colours, their shapes) must be readable from those tokens.
A *linear probe* measures it: freeze the ViT, take the token of every patch, and fit one linear
classifier (softmax regression) that predicts a label of that patch — "is there an object here?",
"which colour is it?", "which shape?". If a linear layer can read it, so can the projector.

- :func:`patch_labels` turns each scene's object boxes into one label per patch: the patch's label
  is that of the object whose box contains the patch centre, ``0`` (background) otherwise.
- :func:`patch_features` runs the frozen ViT: ``(N, 3, H, W)`` → ``(N, patches, width)``.
- :func:`linear_probe` fits the classifier on the patches of training scenes and scores it on the
  patches of held-out scenes, beside a baseline that sees no image at all: the most common
  label at each patch position in the training scenes.

>>> labels = patch_labels([[{"box": [0.0, 0.0, 0.5, 0.5], "shape": "star", "color": "red"}]], 2, "shape")
>>> labels.tolist()  # the top-left patch centre (0.25, 0.25) is inside the box
[[4, 0, 0, 0]]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from pali3_edu.data.shapesworld import COLORS, SHAPES

ProbeTarget = Literal["object", "color", "shape"]
PROBE_TARGETS: tuple[str, ...] = ("object", "color", "shape")

#: The names of the classes of each target; class 0 is always "background".
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "object": ("background", "object"),
    "color": ("background", *COLORS),
    "shape": ("background", *SHAPES),
}


def _check_target(target: str) -> None:
    if target not in CLASS_NAMES:
        raise ValueError(f"Unknown probe target {target!r}; choose one of {PROBE_TARGETS}.")


def patch_labels(objects: Sequence[Sequence[dict[str, Any]]], grid: int, target: ProbeTarget) -> Tensor:
    """One label per patch of a ``grid × grid`` patch grid: ``(N, grid * grid)`` int64, row-major
    (the ViT's patch order).

    ``objects[i]`` lists scene ``i``'s objects, each with ``box = [y0, x0, y1, x1]`` in [0, 1]
    and its ``shape`` and ``color``. A patch is labelled by the first object whose box contains
    the patch centre; ``0`` means background. ``target="object"`` gives 1 for any object;
    ``"color"``/``"shape"`` give ``1 +`` the index in ``COLORS``/``SHAPES``.
    """
    _check_target(target)
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
        raise ValueError(f"grid must be a positive int (patches per side), got {grid!r}")
    centres = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    cy, cx = torch.meshgrid(centres, centres, indexing="ij")
    cy, cx = cy.flatten(), cx.flatten()
    names = CLASS_NAMES[target]
    out = torch.zeros(len(objects), grid * grid, dtype=torch.long)
    for i, scene in enumerate(objects):
        for obj in reversed(list(scene)):  # reversed: the first object containing a centre wins
            y0, x0, y1, x1 = (float(v) for v in obj["box"])
            inside = (cy >= y0) & (cy <= y1) & (cx >= x0) & (cx <= x1)
            label = 1 if target == "object" else names.index(obj[target])
            out[i, inside] = label
    return out


@torch.no_grad()
def patch_features(vit: torch.nn.Module, pixel_values: Tensor, batch_size: int = 256) -> Tensor:
    """The frozen ViT's patch tokens: ``(N, 3, H, W)`` (uint8, or float in [-1, 1]) →
    ``(N, patches, width)`` float32 on the CPU (eval mode; the ViT's mode is restored)."""
    if pixel_values.ndim != 4:
        raise ValueError(f"pixel_values must be (N, 3, H, W), got shape {tuple(pixel_values.shape)}")
    was_training = vit.training
    vit.eval()
    device = next(vit.parameters()).device
    out = []
    for chunk in pixel_values.split(batch_size):
        if chunk.dtype == torch.uint8:
            chunk = chunk.float() / 127.5 - 1.0
        out.append(vit(chunk.to(device)).tokens.float().cpu())
    vit.train(was_training)
    return torch.cat(out)


@dataclass
class ProbeResult:
    """A probe's scores on held-out patches (see :func:`linear_probe`).

    - ``accuracy``: over every held-out patch;
    - ``object_accuracy``: over the patches that hold an object (label > 0) — for colour and
      shape the informative number, since most patches are background;
    - ``blind_accuracy`` / ``blind_object_accuracy``: the same for the no-image baseline (the most
      common training label at each patch position; on object patches, the most common object
      label at that position);
    - ``predictions``: ``(N_test, patches)`` the probe's labels, for plots.
    """

    target: str
    accuracy: float
    object_accuracy: float
    blind_accuracy: float
    blind_object_accuracy: float
    predictions: Tensor

    def row(self) -> dict[str, float | str]:
        """The scores as a flat dict (for a table)."""
        return {"target": self.target, "accuracy": self.accuracy, "object_accuracy": self.object_accuracy,
                "blind_accuracy": self.blind_accuracy, "blind_object_accuracy": self.blind_object_accuracy}


def _blind_labels(train_labels: Tensor, num_classes: int, objects_only: bool) -> Tensor:
    """The most common training label per patch position ``(patches,)``."""
    counts = F.one_hot(train_labels, num_classes).sum(0)  # (patches, classes)
    if objects_only:
        counts[:, 0] = -1
    return counts.argmax(-1)


def _mean(x: Tensor) -> float:
    return float(x.float().mean()) if x.numel() else float("nan")


def linear_probe(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    target: ProbeTarget,
    steps: int = 300,
    lr: float = 0.05,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> ProbeResult:
    """Fit a softmax-regression probe on training patches and score it on held-out patches.

    - ``*_features``: ``(N, patches, width)`` frozen patch tokens (:func:`patch_features`);
    - ``*_labels``: ``(N, patches)`` from :func:`patch_labels` with the same ``target``.

    The features are standardised with the training patches' mean and standard deviation; the
    probe is trained full batch with Adam for ``steps`` steps (deterministic for a ``seed``).
    """
    _check_target(target)
    num_classes = len(CLASS_NAMES[target])
    for name, f, y in (("train", train_features, train_labels), ("test", test_features, test_labels)):
        if f.ndim != 3 or y.shape != f.shape[:2]:
            raise ValueError(f"{name}_features must be (N, patches, width) and {name}_labels (N, patches); "
                             f"got {tuple(f.shape)} and {tuple(y.shape)}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise ValueError(f"{name}_labels must be in 0..{num_classes - 1} for target {target!r}: "
                             "make them with patch_labels(..., target) for the same target")
    if train_features.shape[1:] != test_features.shape[1:]:
        raise ValueError(f"train and test features differ in shape: {tuple(train_features.shape[1:])} vs "
                         f"{tuple(test_features.shape[1:])} (same ViT and image size for both)")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    x = train_features.flatten(0, 1).float()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    x = (x - mean) / std
    y = train_labels.flatten()
    g = torch.Generator().manual_seed(seed)
    weight = (torch.randn(x.shape[1], num_classes, generator=g) * 0.01).requires_grad_()
    bias = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.Adam([weight, bias], lr=lr, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(steps):
            loss = F.cross_entropy(x @ weight + bias, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        xt = (test_features.float() - mean) / std
        pred = (xt @ weight + bias).argmax(-1)  # (N_test, patches)
    objects = test_labels > 0
    blind = _blind_labels(train_labels, num_classes, False).expand_as(test_labels)
    blind_obj = _blind_labels(train_labels, num_classes, True).expand_as(test_labels)
    return ProbeResult(
        target=target,
        accuracy=_mean(pred == test_labels),
        object_accuracy=_mean((pred == test_labels)[objects]),
        blind_accuracy=_mean(blind == test_labels),
        blind_object_accuracy=_mean((blind_obj == test_labels)[objects]),
        predictions=pred,
    )


def probe_vit(
    vit: torch.nn.Module,
    train_pixels: Tensor,
    train_objects: Sequence[Sequence[dict[str, Any]]],
    test_pixels: Tensor,
    test_objects: Sequence[Sequence[dict[str, Any]]],
    targets: Sequence[str] = PROBE_TARGETS,
    **probe_kwargs: Any,
) -> dict[str, ProbeResult]:
    """Every probe in ``targets`` on one frozen ViT: ``{target: ProbeResult}``.

    ``*_pixels`` ``(N, 3, H, W)`` at the ViT's resolution, ``*_objects`` the scenes' object lists.
    """
    if len(train_pixels) != len(train_objects) or len(test_pixels) != len(test_objects):
        raise ValueError("one object list per image is needed (train and test)")
    train_f, test_f = patch_features(vit, train_pixels), patch_features(vit, test_pixels)
    grid = round(train_f.shape[1] ** 0.5)
    if grid * grid != train_f.shape[1]:
        raise ValueError(f"{train_f.shape[1]} patch tokens do not form a square grid")
    return {
        t: linear_probe(train_f, patch_labels(train_objects, grid, t), test_f,
                        patch_labels(test_objects, grid, t), t, **probe_kwargs)
        for t in targets
    }


__all__ = [
    "CLASS_NAMES", "PROBE_TARGETS", "ProbeResult", "linear_probe", "patch_features", "patch_labels", "probe_vit",
]
