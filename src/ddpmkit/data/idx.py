"""The IDX format of (Fashion-)MNIST, parsed with numpy, and the Fashion-MNIST loader.

IDX: a 4-byte magic ``0x00 0x00 <type> <ndim>``, then ``ndim`` big-endian uint32 sizes, then the
data.  Images are ``0x00000803`` (2051, uint8, 3 dims), labels ``0x00000801`` (2049, uint8, 1 dim).
Files may be gzip-compressed (``.gz``) or raw.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from .dataset import DataError

IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_HELP = (
    "Fashion-MNIST is not installed. Get it with `sudo apt-get install dataset-fashion-mnist` "
    f"(Debian/Ubuntu; puts the IDX files in {FASHION_MNIST_DIR}; `make fashion-mnist-data` does this "
    "when run as root), or pass --data-dir DIR pointing at a folder holding train-images-idx3-ubyte.gz, "
    "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz (.gz optional)."
)


def read_idx(path: str | Path, expected_magic: int | None = None) -> np.ndarray:
    """Read an IDX file (gzip or raw) of unsigned bytes into a numpy array of its stated shape."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"cannot read IDX file {path}: {err}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path} is not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    magic = int.from_bytes(raw[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise DataError(f"{path}: magic number {magic} but expected {expected_magic} "
                        f"({'images' if expected_magic == IDX_IMAGES_MAGIC else 'labels'}); corrupt or wrong file")
    if raw[2] != 0x08:
        raise DataError(f"{path}: IDX data type 0x{raw[2]:02x} is not supported (only unsigned bytes, 0x08)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    count = int(np.prod(dims))
    if len(raw) - header != count:
        raise DataError(f"{path}: header says shape {dims} ({count} bytes) but the file holds "
                        f"{len(raw) - header} data bytes; corrupt or truncated")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _find(data_dir: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (data_dir / name).is_file():
            return data_dir / name
    return None


def load_fashion_mnist_arrays(data_dir: str | Path | None, split: str) -> tuple[np.ndarray, np.ndarray, Path]:
    """(images uint8 (N, 1, 28, 28), labels int64 (N,), directory) of one split."""
    data_dir = Path(data_dir or FASHION_MNIST_DIR)
    stems = FASHION_MNIST_FILES[split]
    paths = [_find(data_dir, s) for s in stems]
    if not data_dir.is_dir() or any(p is None for p in paths):
        missing = [s + "[.gz]" for s, p in zip(stems, paths, strict=True) if p is None]
        where = (f"{data_dir} does not exist" if not data_dir.is_dir()
                 else f"missing in {data_dir}: {', '.join(missing)}")
        raise DataError(f"{FASHION_MNIST_HELP} ({where})")
    images = read_idx(paths[0], IDX_IMAGES_MAGIC)
    labels = read_idx(paths[1], IDX_LABELS_MAGIC)
    if images.ndim != 3 or labels.ndim != 1:
        raise DataError(f"{data_dir}: expected images (N, H, W) and labels (N,), got {images.shape} and {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{data_dir}: {images.shape[0]} images but {labels.shape[0]} labels in the {split} split")
    if labels.size and labels.max() >= 10:
        raise DataError(f"{paths[1]}: labels must be 0..9, found {int(labels.max())}")
    return images[:, None], labels.astype(np.int64), data_dir
