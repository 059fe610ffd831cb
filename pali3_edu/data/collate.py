"""Images to tensors: resize, scale to [-1, 1], stack into batches.

SigLIP (and so PaLI-3) expects RGB images resized to the model's resolution with pixel values
mapped from [0, 255] to [-1, 1]: ``x = pixel / 127.5 - 1``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def _as_float_chw(img: Image.Image | np.ndarray) -> torch.Tensor:
    """Any accepted image -> float32 tensor ``(3, H, W)`` in [0, 1]."""
    if isinstance(img, Image.Image):
        if img.mode != "RGB":  # grayscale, palette, RGBA...: PIL knows how to convert
            img = img.convert("RGB")
        arr = np.asarray(img, dtype=np.uint8)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0
    if not isinstance(img, np.ndarray):
        raise TypeError(
            f"Expected a PIL.Image or a numpy array (H, W, 3), got {type(img).__name__}. "
            "For a torch tensor use tensor.permute(1, 2, 0).numpy()."
        )
    if img.ndim == 2:
        raise ValueError(
            f"Got a 2-D array {img.shape}: a grayscale image. Expected (H, W, 3) RGB; "
            "use np.stack([a, a, a], axis=-1) to make it RGB."
        )
    if img.ndim != 3:
        raise ValueError(f"Expected an image array of shape (H, W, 3), got shape {img.shape}.")
    if img.shape[-1] != 3:
        hint = " (drop the alpha channel: img[..., :3])" if img.shape[-1] == 4 else ""
        if img.shape[0] == 3:
            hint = " (channels-first? use img.transpose(1, 2, 0))"
        raise ValueError(f"Expected 3 colour channels last, got shape {img.shape}{hint}.")
    if img.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 255.0
    if img.dtype in (np.float32, np.float64):
        lo, hi = float(img.min()), float(img.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"Float images must hold values in [0, 1], got range [{lo:.3g}, {hi:.3g}]. "
                "Divide uint8-range values by 255 (or pass the uint8 array)."
            )
        return torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).permute(2, 0, 1)
    raise TypeError(f"Unsupported image dtype {img.dtype}: use uint8 in [0, 255] or float32 in [0, 1].")


def image_to_tensor(img: Image.Image | np.ndarray, image_size: int) -> torch.Tensor:
    """One image -> float32 tensor ``(3, image_size, image_size)`` with values in [-1, 1].

    Accepts a PIL image (any mode; converted to RGB) or a numpy array ``(H, W, 3)`` of uint8
    (0..255) or float (0..1). Resizes with bilinear interpolation (antialiased when shrinking)
    if the size differs. Non-square images are stretched to a square, as in SigLIP/PaLI.
    """
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    x = _as_float_chw(img)
    if x.shape[-2:] != (image_size, image_size):
        x = F.interpolate(x[None], size=(image_size, image_size), mode="bilinear",
                          align_corners=False, antialias=True)[0].clamp_(0.0, 1.0)
    return x * 2.0 - 1.0


def images_to_batch(images: Sequence[Image.Image | np.ndarray], image_size: int) -> torch.Tensor:
    """A list of images -> ``(batch, 3, image_size, image_size)`` float32 in [-1, 1]."""
    if len(images) == 0:
        raise ValueError("images_to_batch got an empty list of images.")
    return torch.stack([image_to_tensor(im, image_size) for im in images])


def tensor_to_image(x: torch.Tensor) -> Image.Image:
    """Inverse of ``image_to_tensor`` for display: ``(3, H, W)`` in [-1, 1] -> PIL RGB."""
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"Expected a (3, H, W) tensor, got shape {tuple(x.shape)}")
    arr = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(arr, "RGB")
