"""Image grids: layout, pixel placement, saved modes and sizes."""

import numpy as np
import pytest
import torch
from PIL import Image

from ddpmkit.data import to_model_range
from ddpmkit.viz import make_grid, save_grid


def constant_images(n, c=1, s=8):
    """Image i filled with the value i (uint8), returned in the model range."""
    vals = torch.arange(n, dtype=torch.uint8)
    return to_model_range(vals.reshape(n, 1, 1, 1).expand(n, c, s, s).contiguous())


def test_grid_of_100_is_10_by_10_with_each_image_in_its_cell():
    grid = make_grid(constant_images(100), padding=2, pad_value=255)
    assert grid.dtype == np.uint8 and grid.shape == (2 + 10 * 10, 2 + 10 * 10, 1)
    for i in (0, 1, 9, 10, 37, 99):
        r, c = divmod(i, 10)
        top, left = 2 + r * 10, 2 + c * 10
        assert np.all(grid[top:top + 8, left:left + 8] == i)
    assert np.all(grid[:2] == 255) and np.all(grid[:, 10:12] == 255)  # padding lines


def test_grid_nrow_partial_last_row_and_rgb():
    x = constant_images(7, c=3, s=4)
    grid = make_grid(x, nrow=3, padding=1, pad_value=0)
    assert grid.shape == (1 + 3 * 5, 1 + 3 * 5, 3)
    assert np.all(grid[11:15, 1:5] == 6)  # image 6: row 2, column 0
    assert np.all(grid[11:15, 6:10] == 0)  # empty cell keeps the pad value
    assert make_grid(x[:2]).shape == (2 + 1 * 6, 2 + 2 * 6, 3)  # ceil(sqrt(2)) = 2 per row, one row


def test_grid_accepts_uint8_and_rejects_points():
    u = torch.full((4, 1, 3, 3), 200, dtype=torch.uint8)
    assert make_grid(u, padding=0).max() == 200
    with pytest.raises(ValueError, match="N, C, H, W"):
        make_grid(torch.zeros(10, 2))


def test_save_grid_upscales_small_images_and_keeps_modes(tmp_path):
    p = save_grid(constant_images(100), tmp_path / "deep" / "dir" / "digits.png")
    with Image.open(p) as img:
        assert img.mode == "L" and img.size == (102 * 4, 102 * 4)  # 8x8 -> 32 px per image
        assert img.getpixel((2 * 4, 2 * 4)) == 0 and img.getpixel(((2 + 9 * 10) * 4, (2 + 9 * 10) * 4)) == 99
    p = save_grid(constant_images(4, c=3, s=32), tmp_path / "rgb.png", nrow=4)
    with Image.open(p) as img:
        assert img.mode == "RGB" and img.size == (2 + 4 * 34, 2 + 34)
    p = save_grid(constant_images(4, s=28), tmp_path / "fm.png", scale=3)
    with Image.open(p) as img:
        assert img.size == (3 * (2 + 2 * 30), 3 * (2 + 2 * 30))
