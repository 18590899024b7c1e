"""A folder of PNG/JPEG images (searched recursively), converted (any Pillow mode, see ``images.to_8bit``),
resized and centre-cropped.

Labels: when every image lies in a first-level subfolder and there are at least two of them, the
sorted subfolder names become the classes; otherwise the set is unlabelled.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from .dataset import DataError, resize_center_crop
from .images import to_8bit

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def find_images(root: Path) -> list[Path]:
    """All files under ``root`` with a PNG/JPEG suffix (any case), sorted for a stable order."""
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


# what a corrupt or unsupported file raises while it is decoded: skipped and counted, never fatal
UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def read_image(path: Path, size: int, mode: str) -> tuple[np.ndarray, tuple[int, int]]:
    """(uint8 (C, size, size), original (width, height)) of one file; raises one of ``UNREADABLE``."""
    with Image.open(path) as img:
        img.load()
        original = img.size
        img = resize_center_crop(to_8bit(img, mode, where=str(path)), size)
    arr = np.asarray(img, dtype=np.uint8)
    return (arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)), original


def load_image_folder_arrays(data_dir, image_size: int | None, channels: int | None
                             ) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...] | None, Path]:
    """(images uint8 (N, C, S, S), labels or None, class names or None, root)."""
    if not data_dir:
        raise DataError("image-folder needs --data-dir: a folder of PNG/JPEG images (searched recursively)")
    if not image_size:
        raise DataError("image-folder needs image_size (images are resized and centre-cropped to it)")
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    mode = {None: "RGB", 3: "RGB", 1: "L"}[channels]
    images, kept, skipped = [], [], []
    for path in find_images(root):
        try:
            images.append(read_image(path, image_size, mode)[0])
            kept.append(path)
        except UNREADABLE:
            skipped.append(path)
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable image file(s) under {root} "
                      f"(first: {skipped[0].relative_to(root)})", stacklevel=3)
    if not images:
        raise DataError(f"no readable PNG/JPEG images found under {root}"
                        + (f" ({len(skipped)} unreadable)" if skipped else ""))
    x = np.stack(images)
    rel = [p.relative_to(root).parts for p in kept]
    classes = sorted({r[0] for r in rel}) if all(len(r) >= 2 for r in rel) else []
    if len(classes) < 2:
        return x, None, None, root
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[r[0]] for r in rel], dtype=np.int64)
    return x, y, tuple(classes), root
