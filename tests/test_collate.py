"""Image -> tensor conversion: value range, resizing, accepted inputs and the errors for the rest."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pali3_edu.data.collate import image_to_tensor, images_to_batch, tensor_to_image


def _checker(size: int = 8) -> np.ndarray:
    arr = np.zeros((size, size, 3), dtype=np.uint8)
    arr[::2, ::2] = 255
    arr[..., 1] = 128
    return arr


def test_values_map_to_minus_one_one():
    arr = _checker()
    x = image_to_tensor(Image.fromarray(arr), 8)
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32
    assert x[0, 0, 0] == 1.0 and x[0, 0, 1] == -1.0
    assert torch.allclose(x[1], torch.full((8, 8), 128 / 127.5 - 1), atol=1e-6)
    # the same pixels through numpy uint8, numpy float and PIL agree exactly
    assert torch.equal(x, image_to_tensor(arr, 8))
    assert torch.allclose(x, image_to_tensor(arr.astype(np.float32) / 255, 8), atol=1e-6)


def test_resize_is_bilinear_and_in_range():
    arr = np.zeros((4, 4, 3), dtype=np.uint8)
    arr[:, 2:] = 255  # left half black, right half white
    x = image_to_tensor(arr, 8)
    assert x.shape == (3, 8, 8)
    assert x.min() >= -1 and x.max() <= 1
    row = x[0, 0]
    assert row[0] == -1 and row[-1] == 1 and -1 < row[3] < 1 and -1 < row[4] < 1  # a smooth edge
    assert torch.all(row[1:] >= row[:-1])
    down = image_to_tensor(np.full((64, 64, 3), 200, np.uint8), 16)
    assert torch.allclose(down, torch.full_like(down, 200 / 127.5 - 1), atol=1e-5)


def test_pil_modes_are_converted():
    gray = Image.new("L", (5, 7), 255)
    rgba = Image.new("RGBA", (6, 6), (255, 0, 0, 10))
    assert image_to_tensor(gray, 4).shape == (3, 4, 4)
    x = image_to_tensor(rgba, 6)
    assert x[0].eq(1).all() and x[1].eq(-1).all()


@pytest.mark.parametrize("bad, error, message", [
    (np.zeros((8, 8), np.uint8), ValueError, "grayscale"),
    (np.zeros((8, 8, 4), np.uint8), ValueError, "alpha"),
    (np.zeros((3, 8, 8), np.uint8), ValueError, "channels-first"),
    (np.zeros((2, 8, 8, 3), np.uint8), ValueError, "shape"),
    (np.zeros((8, 8, 3), np.int32), TypeError, "dtype int32"),
    (np.full((8, 8, 3), 255.0, np.float32), ValueError, r"\[0, 1\]"),
    (torch.zeros(3, 8, 8), TypeError, "torch tensor"),
])
def test_bad_images_raise_clear_errors(bad, error, message):
    with pytest.raises(error, match=message):
        image_to_tensor(bad, 8)


def test_batch_and_inverse():
    images = [Image.fromarray(_checker(8)), _checker(16), Image.new("RGB", (10, 20), (0, 0, 255))]
    batch = images_to_batch(images, 8)
    assert batch.shape == (3, 3, 8, 8)
    assert np.array_equal(np.asarray(tensor_to_image(batch[0])), _checker(8))
    with pytest.raises(ValueError, match="empty"):
        images_to_batch([], 8)
    with pytest.raises(ValueError, match="image_size"):
        image_to_tensor(_checker(), 0)
