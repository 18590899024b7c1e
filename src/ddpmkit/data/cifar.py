"""CIFAR-10 in its "python version" pickle batches, read with a restricted unpickler.

A batch file is a pickled dict with ``b'data'`` (N x 3072 uint8, channel planes of 32 x 32, row
major) and ``b'labels'`` (N ints).  Pickles can run arbitrary code, so :class:`SafeUnpickler`
resolves only the handful of globals that a dict of numpy arrays, lists and bytes needs and
refuses everything else before anything is called.
"""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path

import numpy as np

from .dataset import DataError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
CIFAR10_HELP = ("CIFAR-10 needs --data-dir DIR: a folder holding data_batch_1..5 and test_batch (the "
                "'cifar-10-batches-py' folder of https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, "
                "or the folder that contains it)")


def _first_attr(modules: tuple[str, ...], name: str):
    for mod in modules:
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
    return None


def _allowed_globals() -> dict[tuple[str, str], object]:
    """(module, name) -> object for everything a pickled numpy array may reference."""
    core = ("numpy._core.multiarray", "numpy.core.multiarray")
    numeric = ("numpy._core.numeric", "numpy.core.numeric")
    objs = {
        "_reconstruct": _first_attr(core, "_reconstruct"),
        "scalar": _first_attr(core, "scalar"),
        "_frombuffer": _first_attr(numeric, "_frombuffer"),
    }
    allowed: dict[tuple[str, str], object] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for name, obj in objs.items():
        if obj is not None:
            mods = numeric if name == "_frombuffer" else core
            allowed.update({(m, name): obj for m in mods})
    import codecs
    allowed[("_codecs", "encode")] = codecs.encode  # protocol-2 pickles of bytes use it
    return allowed


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that only resolves numpy-array reconstruction and ``_codecs.encode``."""

    _allowed = None

    def find_class(self, module: str, name: str):
        if SafeUnpickler._allowed is None:
            SafeUnpickler._allowed = _allowed_globals()
        try:
            return SafeUnpickler._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a data file") from None


def safe_load_pickle(path: str | Path) -> object:
    """Unpickle a data file with :class:`SafeUnpickler` (Python-2 strings read as bytes)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            return SafeUnpickler(f, encoding="bytes").load()
    except pickle.UnpicklingError as err:
        raise DataError(f"refusing to load {path}: {err}") from None
    except (OSError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise DataError(f"cannot read {path} as a pickle batch: {err}") from None


def _plain_keys(d: dict) -> dict:
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in d.items()}


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 3, 32, 32), labels int64 (N,)) of one batch file."""
    obj = safe_load_pickle(path)
    if not isinstance(obj, dict):
        raise DataError(f"{path}: a CIFAR batch is a dict, got {type(obj).__name__}")
    d = _plain_keys(obj)
    if "data" not in d or "labels" not in d:
        raise DataError(f"{path}: a CIFAR batch needs 'data' and 'labels' entries, found {sorted(map(str, d))}")
    data = np.asarray(d["data"])
    labels = np.asarray(d["labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: 'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],):
        raise DataError(f"{path}: {data.shape[0]} images but labels of shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path}: labels must be 0..9")
    return data.reshape(-1, 3, 32, 32), labels


def cifar10_dir(data_dir: str | Path | None) -> Path:
    """The folder holding the batch files: ``data_dir`` or its ``cifar-10-batches-py`` subfolder."""
    if not data_dir:
        raise DataError(CIFAR10_HELP)
    root = Path(data_dir)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    if not root.is_dir():
        raise DataError(f"{root} does not exist. {CIFAR10_HELP}")
    return root


def load_cifar10_arrays(data_dir: str | Path | None, split: str) -> tuple[np.ndarray, np.ndarray, Path]:
    """(images (N, 3, 32, 32) uint8, labels (N,), folder) of the train (5 batches) or test split."""
    root = cifar10_dir(data_dir)
    names = CIFAR10_FILES[split]
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise DataError(f"missing CIFAR-10 batch files in {root}: {', '.join(missing)}. {CIFAR10_HELP}")
    parts = [read_cifar_batch(root / n) for n in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), root
