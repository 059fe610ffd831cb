"""Plots (matplotlib) and explorers (ipywidgets) for the lessons, one module per topic:
``viz.data`` (ShapesWorld), ``viz.vision`` (patches, position embeddings), ``viz.siglip``
(similarity matrices, retrieval browser), ``viz.text`` (denoisers), ``viz.encdec`` (relative
position buckets, attention masks)."""

from __future__ import annotations

from typing import Any

import numpy as np


def to_hwc(image: Any) -> np.ndarray:
    """Any image the lessons hold → float array ``(H, W, 3)`` in [0, 1] for ``plt.imshow``.

    Accepts a PIL image, a numpy array ``(H, W, 3)`` (uint8, or float in [0, 1]), or a tensor
    ``(3, H, W)`` / ``(1, 3, H, W)``: uint8 (0..255) or float in [-1, 1] (the model's range).
    """
    import torch

    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.ndim == 4:
            t = t[0]
        if t.ndim != 3 or t.shape[0] not in (1, 3):
            raise ValueError(f"Expected a (3, H, W) tensor, got shape {tuple(image.shape)}")
        t = t.float() / 255.0 if t.dtype == torch.uint8 else (t.float() + 1) / 2
        return t.permute(1, 2, 0).clamp(0, 1).numpy()
    arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    return arr.astype(np.float32).clip(0, 1)
