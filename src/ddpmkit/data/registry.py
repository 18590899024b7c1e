"""``load_dataset(name, ...)``: one entry point for every dataset, with a registry of names."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .cifar import CIFAR10_CLASSES, load_cifar10_arrays
from .dataset import DataError, Dataset, check_int_option, convert_channels, resize_images, subset_indices
from .folder import load_image_folder_arrays
from .idx import FASHION_MNIST_CLASSES, load_fashion_mnist_arrays
from .passed import PASSED_NAMES
from .toy import DEFAULT_TOY_N, TOY_SETS, make_toy

SPLITS = ("train", "test")
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0  # the train/test split is fixed, independent of `seed`


def _digits(data_dir, split):
    """scikit-learn's 8x8 digits (0..16 scaled to 0..255), a fixed 80/20 split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(y))
    n_test = int(round(len(y) * DIGITS_TEST_FRACTION))
    idx = np.sort(perm[n_test:] if split == "train" else perm[:n_test])
    return x[idx], y[idx], tuple(str(i) for i in range(10)), "sklearn.datasets.load_digits"


def _fashion_mnist(data_dir, split):
    x, y, root = load_fashion_mnist_arrays(data_dir, split)
    return x, y, FASHION_MNIST_CLASSES, str(root)


def _cifar10(data_dir, split):
    x, y, root = load_cifar10_arrays(data_dir, split)
    return x, y, CIFAR10_CLASSES, str(root)


IMAGE_SETS: dict[str, Callable] = {"digits": _digits, "fashion-mnist": _fashion_mnist, "cifar10": _cifar10}
DATASETS = (*IMAGE_SETS, "image-folder", *TOY_SETS)


def dataset_names() -> tuple[str, ...]:
    return DATASETS


def _normalise(name: str) -> str:
    key = str(name).strip().lower().replace("_", "-")
    aliases = {"fashion-mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "cifar-10": "cifar10",
               "imagefolder": "image-folder", "folder": "image-folder", "swissroll": "swiss-roll",
               "moons": "two-moons", "8-gaussians": "8gaussians", "eight-gaussians": "8gaussians"}
    key = aliases.get(key, key)
    if key in PASSED_NAMES:
        raise DataError(f"data.name = {key!r} stands for data passed in Python to ddpmkit.training.train(cfg, "
                        "data=...); it cannot be loaded by name (pass the same data again, or name a data set: "
                        f"{', '.join(DATASETS)})")
    if key not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    return key


def load_dataset(name: str, *, data_dir=None, split: str = "train", image_size: int | None = None,
                 channels: int | None = None, n: int | None = None, seed: int = 0) -> Dataset:
    """Load a dataset into memory.

    Args:
        name: one of :data:`DATASETS` ('digits', 'fashion-mnist', 'cifar10', 'image-folder',
            'swiss-roll', 'two-moons', '8gaussians', 'checkerboard').
        data_dir: where the files are (Fashion-MNIST defaults to Debian's
            /usr/share/datasets/fashion-mnist; CIFAR-10 and image-folder need it).
        split: 'train' or 'test' (digits: a fixed 80/20 split; image-folder: 'train' only).
        image_size: resize (shorter side, bicubic) and centre-crop images to this size; None/0 keeps
            the native size (required for image-folder).
        channels: 1 or 3 to convert images (grayscale <-> RGB); None/0 keeps the native channels.
        n: images: a seeded random subset of this many; toy sets: the number of points
            (default 10,000).
        seed: seeds the subset and the toy points.

    Config-style "unset" values (``""`` and ``0``) mean None.
    """
    key = _normalise(name)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    data_dir = data_dir or None
    image_size = check_int_option("image_size", image_size)
    channels = check_int_option("channels", channels, (1, 3))
    n = check_int_option("n", n)

    if key in TOY_SETS:
        if image_size or channels:
            raise DataError(f"{key} is a 2-D point set: image_size and channels do not apply")
        pts, y, k = make_toy(key, n or DEFAULT_TOY_N, seed, split)
        return Dataset(torch.from_numpy(pts), None if y is None else torch.from_numpy(y), k, "points", key,
                       split, source=f"{key}(n={n or DEFAULT_TOY_N}, seed={seed})")

    if key == "image-folder":
        if split != "train":
            raise DataError("image-folder has a single split; use split='train'")
        x, y, names, root = load_image_folder_arrays(data_dir, image_size, channels)
        source = str(root)
    else:
        x, y, names, source = IMAGE_SETS[key](data_dir, split)
        if channels:
            x = convert_channels(x, channels)
    keep = subset_indices(len(x), n, seed)
    if keep is not None:
        x, y = x[keep], (None if y is None else y[keep])
    if image_size and key != "image-folder":
        x = resize_images(x, image_size)
    return Dataset(x=torch.from_numpy(np.ascontiguousarray(x)),
                   y=None if y is None else torch.from_numpy(y.astype(np.int64)),
                   num_classes=None if y is None else len(names), kind="image", name=key, split=split,
                   class_names=None if y is None else tuple(names), source=source)
