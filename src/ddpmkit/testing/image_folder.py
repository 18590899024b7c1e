"""A small image folder with every case a real one has: PNG and JPEG, RGB / L / RGBA / palette images,
mixed sizes (some smaller than the training size), corrupt files and two class subfolders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class MixedFolder:
    root: Path
    readable: int      # images that decode
    corrupt: int       # files with an image suffix that do not
    smaller_than: int  # readable images whose shorter side is below ``target``
    target: int


def make_mixed_folder(root: str | Path, target: int = 8, seed: int = 0, per_class: int = 12) -> MixedFolder:
    """Two classes ("a", "b") of ``per_class`` images each, cycling through formats, modes and sizes."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    modes = ("RGB", "L", "RGBA", "P")
    readable = smaller = 0
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            mode = modes[i % len(modes)]
            w, h = int(rng.integers(target // 2 + 1, 3 * target)), int(rng.integers(target // 2 + 1, 3 * target))
            rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            img = rgb.convert(mode) if mode != "RGBA" else Image.merge(
                "RGBA", (*rgb.split(), Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))))
            jpeg = i % 3 == 1 and mode in ("RGB", "L")
            img.save(root / cls / f"img{i:02d}.{'jpg' if jpeg else 'png'}", **({"quality": 90} if jpeg else {}))
            readable += 1
            smaller += min(w, h) < target
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image at all")
    (root / "b" / "truncated.jpg").write_bytes((root / "b" / "img01.jpg").read_bytes()[:40])
    (root / "b" / "empty.jpeg").write_bytes(b"")
    (root / "b" / "notes.txt").write_text("not an image suffix: ignored")
    return MixedFolder(root, readable, 3, smaller, target)
