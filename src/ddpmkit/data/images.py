"""One conversion from any Pillow image mode to 8-bit grayscale or RGB, shared by every image reader.

Pillow's own ``convert('L')`` clips 16- and 32-bit integer images at 255 (a 16-bit PNG comes out
nearly all white), so integer modes are rescaled here from their full range instead: ``I;16*``
from 0..65535, ``I`` (how Pillow opens 16-bit PNGs and TIFFs) likewise, after checking its values
fit.  Palette images keep their transparency meaningful by going through RGBA; alpha is dropped
(the colour values are kept, not blended); CMYK and YCbCr go through Pillow's RGB conversion.
Floating-point (``F``) images have no defined pixel range and are refused, as are the modes Pillow
cannot turn into RGB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .dataset import DataError

GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_VIA_RGBA = ("P", "PA", "LA", "RGBa")
_CONVERTIBLE = ("1", "L", "P", "PA", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr")


def native_channels(img: Image.Image) -> int:
    """1 for grayscale modes (with or without alpha, 1-bit, 16-bit), 3 for everything else."""
    return 1 if img.mode in GRAY_MODES else 3


def _integer_to_8bit(img: Image.Image, where: str) -> Image.Image:
    arr = np.asarray(img).astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise DataError(f"{where}: {img.mode!r} image with values {arr.min()}..{arr.max()} outside the 16-bit "
                        "range 0..65535; save it as 8- or 16-bit")
    return Image.fromarray(((arr * 255 + 32767) // 65535).astype(np.uint8), mode="L")


def to_8bit(img: Image.Image, mode: str, where: str = "image") -> Image.Image:
    """``img`` (any mode Pillow opens) as an 8-bit ``mode`` ('L' or 'RGB') image; ``where`` names it in errors."""
    if mode not in ("L", "RGB"):
        raise ValueError(f"mode must be 'L' or 'RGB', got {mode!r}")
    if img.mode == "La":  # premultiplied alpha: Pillow converts it only to LA
        img = img.convert("LA")
    if img.mode in _SIXTEEN_BIT or img.mode == "I":
        img = _integer_to_8bit(img, where)
    elif img.mode not in _CONVERTIBLE:
        raise DataError(f"{where}: images of mode {img.mode!r} are not supported (no defined 8-bit pixel range); "
                        "save it as 8- or 16-bit grayscale or RGB")
    if img.mode in _VIA_RGBA and (mode == "RGB" or img.mode in ("P", "PA")):
        img = img.convert("RGBA")
    if img.mode in ("CMYK", "YCbCr", "RGBA", "RGBa", "RGBX") and mode == "L":
        img = img.convert("RGB")
    return img if img.mode == mode else img.convert(mode)


def read_image_array(path: str | Path, channels: int | None = None) -> np.ndarray:
    """A file as uint8 (C, H, W) with ``channels`` 1 or 3 (None: the image's own, see ``native_channels``)."""
    try:
        with Image.open(path) as img:
            img.load()
            mode = {1: "L", 3: "RGB"}[channels or native_channels(img)]
            arr = np.asarray(to_8bit(img, mode, where=str(path)), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None
    return (arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)).copy()
