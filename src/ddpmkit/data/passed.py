"""Training data passed in Python (a tensor or a ``torch.utils.data.Dataset``) as an in-memory :class:`Dataset`.

The trainer consumes one format, whatever the source: uint8 images (N, C, H, W) or float32 points
(N, D), with optional long labels.  ``from_python`` converts to it once, up front:

* a tensor (N, C, H, W): uint8 pixels as they are; floating values must lie in [-1, 1] (the model
  range) and are stored as 8-bit pixels ``round((x + 1) * 127.5)``, like every image set here (exact
  for images that came from 8-bit files, e.g. torchvision's ``ToTensor`` then ``Normalize(0.5, 0.5)``);
* a tensor (N, D): points, as float32;
* a ``torch.utils.data.Dataset`` (anything with ``__len__`` and ``__getitem__``) whose items are such
  tensors without the N axis, or ``(tensor, label)`` pairs with integer labels 0..K-1 (K = max + 1).

Its name is ``"tensor"`` or ``"dataset"`` (:data:`PASSED_NAMES`): what a run's stored config records,
as no file or registry name can bring the data back.  :func:`fingerprint` is what ``--resume`` compares.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math

import numpy as np
import torch

from .dataset import DataError, Dataset
from .pixels import to_uint8

PASSED_NAMES = ("tensor", "dataset")


def _check_values(x: torch.Tensor, what: str) -> torch.Tensor:
    if x.ndim not in (2, 4):
        raise DataError(f"{what} must have shape (N, C, H, W) for images or (N, D) for points, "
                        f"got {tuple(x.shape)}")
    if x.shape[0] == 0 or math.prod(x.shape[1:]) == 0:
        raise DataError(f"{what} is empty (shape {tuple(x.shape)})")
    if x.dtype == torch.uint8:
        if x.ndim != 4:
            raise DataError(f"{what}: uint8 data must be images (N, C, H, W), got {tuple(x.shape)}")
        return x.contiguous()
    if not x.is_floating_point():
        raise DataError(f"{what} must be uint8 pixels or floating values, got {x.dtype}")
    x = x.detach().to(device="cpu", dtype=torch.float32)
    if not torch.isfinite(x).all():
        raise DataError(f"{what} holds NaN or infinite values")
    if x.ndim == 4:
        lo, hi = float(x.min()), float(x.max())
        if lo < -1.0 - 1e-6 or hi > 1.0 + 1e-6:
            raise DataError(f"{what}: floating images must lie in [-1, 1] (the model range), got values in "
                            f"[{lo:.4g}, {hi:.4g}]; pass uint8 pixels or rescale with x * 2 - 1 for [0, 1] data")
        return to_uint8(x).contiguous()
    return x.contiguous()


def _label(v, i: int) -> int:
    if isinstance(v, torch.Tensor):
        if v.numel() != 1 or v.is_floating_point() or v.dtype == torch.bool:
            raise DataError(f"dataset item {i}: the label must be one integer, got a {v.dtype} tensor of shape "
                            f"{tuple(v.shape)}")
        v = int(v.item())
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise DataError(f"dataset item {i}: the label must be an integer, got {v!r}")
    v = int(v)
    if v < 0:
        raise DataError(f"dataset item {i}: labels must be 0..K-1, got {v}")
    return v


def _from_items(ds) -> tuple[torch.Tensor, torch.Tensor | None]:
    try:
        n = len(ds)
    except TypeError:
        raise DataError(f"a dataset passed as data needs __len__ and __getitem__ (a map-style "
                        f"torch.utils.data.Dataset), got {type(ds).__name__}") from None
    if n == 0:
        raise DataError("the dataset passed as data is empty")
    xs, ys = [], []
    for i in range(n):
        item = ds[i]
        labelled = isinstance(item, (tuple, list))
        if labelled and len(item) != 2:
            raise DataError(f"dataset item {i}: expected a tensor or a (tensor, label) pair, got {len(item)} values")
        x = item[0] if labelled else item
        if not isinstance(x, torch.Tensor):
            raise DataError(f"dataset item {i}: expected a tensor (C, H, W) or (D,), got {type(x).__name__}")
        if i and (labelled != (ys != []) or x.shape != xs[0].shape or x.dtype != xs[0].dtype):
            raise DataError(f"dataset item {i} ({tuple(x.shape)}, {x.dtype}{', labelled' if labelled else ''}) "
                            f"differs from item 0 ({tuple(xs[0].shape)}, {xs[0].dtype}"
                            f"{', labelled' if ys else ''}); every item must have the same shape, dtype and form")
        xs.append(x)
        if labelled:
            ys.append(_label(item[1], i))
    if xs[0].ndim not in (1, 3):
        raise DataError(f"dataset items must be tensors (C, H, W) for images or (D,) for points, "
                        f"got shape {tuple(xs[0].shape)}")
    return torch.stack(xs), (torch.tensor(ys, dtype=torch.long) if ys else None)


def from_python(data) -> Dataset:
    """``data`` (a tensor or a map-style dataset, see the module docstring) -> an in-memory :class:`Dataset`;
    a ddpmkit :class:`Dataset` (``load_dataset``'s) is taken as it is, named "dataset".  Bad shapes, dtypes,
    values or empty data: ``DataError``."""
    if isinstance(data, Dataset):
        if len(data) == 0:
            raise DataError("the dataset passed as data is empty")
        return dataclasses.replace(data, name="dataset")
    if isinstance(data, torch.Tensor):
        name, x, y = "tensor", data, None
    elif hasattr(data, "__getitem__") and not isinstance(data, (str, bytes, dict)):
        name = "dataset"
        x, y = _from_items(data)
    else:
        raise DataError(f"data must be a tensor (N, C, H, W) / (N, D) or a torch.utils.data.Dataset, "
                        f"got {type(data).__name__}")
    x = _check_values(x, "the tensor passed as data" if name == "tensor" else "the dataset's items")
    kind = "image" if x.ndim == 4 else "points"
    k = None if y is None else int(y.max()) + 1
    return Dataset(x, y, k, kind, name, source=f"{name} passed in Python, {len(x)} items of shape {tuple(x.shape[1:])}")


def fingerprint(ds: Dataset) -> str:
    """sha256 of the items and labels as the trainer holds them: equal for the same data passed again."""
    h = hashlib.sha256()
    h.update(f"{ds.kind} {tuple(ds.x.shape)} {ds.x.dtype} {ds.num_classes}".encode())
    h.update(ds.x.contiguous().numpy().tobytes())
    if ds.y is not None:
        h.update(ds.y.contiguous().numpy().tobytes())
    return h.hexdigest()
