"""Synthetic image folders for benchmarks/data_pipeline.py (JPEG, photo-like smooth content, 100 subfolders)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def make_folder(root: Path, n: int, size: int, seed: int = 0, per_dir: int = 1000) -> Path:
    """``n`` JPEGs (quality 90) slightly larger than ``size`` and of mixed aspect ratios, so that the
    prepare step resizes and crops every one; a ``.complete`` marker makes the folder reusable."""
    root = Path(root)
    marker = root / ".complete"
    if marker.is_file() and json.loads(marker.read_text()) == {"n": n, "size": size, "seed": seed}:
        return root
    rng = np.random.default_rng(seed)
    for i in range(n):
        sub = root / f"c{i // per_dir:03d}"
        if i % per_dir == 0:
            sub.mkdir(parents=True, exist_ok=True)
        w = int(size * rng.uniform(1.1, 1.5))
        h = int(size * rng.uniform(1.0, 1.2))
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)
        arr = np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, (h, w, 1), dtype=np.int16)
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(sub / f"{i:07d}.jpg", quality=90)
    marker.write_text(json.dumps({"n": n, "size": size, "seed": seed}))
    return root


if __name__ == "__main__":
    make_folder(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
