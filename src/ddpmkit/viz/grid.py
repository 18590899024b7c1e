"""Image grids: model-range tensors (N, C, H, W) -> one uint8 picture, saved with Pillow."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.pixels import to_uint8

MIN_CELL_PX = 32  # save_grid upscales small images to at least this many pixels per image


def images_to_uint8(images) -> np.ndarray:
    """(N, C, H, W) (or (C, H, W)) in [-1, 1] (float) or uint8 -> uint8 numpy (N, C, H, W), C in {1, 3}."""
    x = torch.as_tensor(images) if not isinstance(images, torch.Tensor) else images
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images (N, C, H, W) with C = 1 or 3, got shape {tuple(x.shape)}")
    return to_uint8(x.detach().cpu()).numpy()


def make_grid(images, nrow: int | None = None, padding: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile N images into rows of ``nrow`` (default ceil(sqrt(N))): uint8 array (H, W, C).

    Image i sits at row i // nrow, column i % nrow; every image is surrounded by ``padding`` pixels
    of ``pad_value`` (cells start at ``padding + k * (size + padding)``).
    """
    x = images_to_uint8(images)
    n, c, h, w = x.shape
    if n == 0:
        raise ValueError("make_grid needs at least one image")
    nrow = nrow or math.ceil(math.sqrt(n))
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    ncol, nrows = min(nrow, n), math.ceil(n / nrow)
    grid = np.full((padding + nrows * (h + padding), padding + ncol * (w + padding), c), pad_value, np.uint8)
    for i in range(n):
        top, left = padding + (i // nrow) * (h + padding), padding + (i % nrow) * (w + padding)
        grid[top:top + h, left:left + w] = x[i].transpose(1, 2, 0)
    return grid


def grid_image(grid: np.ndarray, scale: int = 1) -> Image.Image:
    """uint8 (H, W, C) -> a Pillow image ('L' for C = 1, 'RGB' for C = 3), upscaled (nearest) by ``scale``."""
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    return img


def auto_scale(image_size: int) -> int:
    """Integer upscaling so an image is at least ``MIN_CELL_PX`` pixels wide (8 -> 4, 28 -> 2, 32 -> 1)."""
    return max(1, math.ceil(MIN_CELL_PX / image_size))


def save_image(img: Image.Image, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def save_grid(images, path, nrow: int | None = None, scale: int | None = None, padding: int = 2,
              pad_value: int = 255) -> Path:
    """Save :func:`make_grid` as a PNG (or any Pillow format by suffix); returns the path.

    ``scale`` (default: :func:`auto_scale` of the image size) enlarges the whole grid with nearest
    neighbour, so 8x8 digits come out at 32x32 per image.  Parent folders are created.
    """
    x = images_to_uint8(images)
    grid = make_grid(x, nrow=nrow, padding=padding, pad_value=pad_value)
    return save_image(grid_image(grid, scale or auto_scale(max(x.shape[-2:]))), path)
