"""Reference features of real data, computed once and cached with a hash of what made them.

The cache key hashes: the dataset name, split, subset size and seed, image size and channels, the
exact uint8 pixels used (so a changed or different copy of the data never reuses stale statistics),
the dataset's files (names and sizes) and the feature network's name and weights hash.  The cache
lives in the user cache (``$DDPMKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/ddpmkit`` or
``~/.cache/ddpmkit``), never beside the data: a data folder may be a system package's
(``/usr/share/datasets``) or shared read-only.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cache import user_cache_dir
from ..data import load_dataset
from ..data.pixels import to_model_range
from ..errors import UserError
from .metrics import feature_stats

CACHE_VERSION = 1


def cache_dir_for(source: str, override: str | Path | None = None) -> Path:
    """Where to cache statistics for data from ``source`` (a directory, or a description)."""
    if override:
        return Path(override)
    return user_cache_dir() / "fid-stats"


def _files_fingerprint(source: str) -> list:
    p = Path(source) if source else None
    if p is None or not p.is_dir():
        return [source]
    return sorted([f.name, f.stat().st_size] for f in p.iterdir() if f.is_file())


@dataclass
class Reference:
    features: np.ndarray          # (N, D) float64
    logits: np.ndarray | None     # (N, K) or None
    mu: np.ndarray
    sigma: np.ndarray
    meta: dict
    path: Path | None = None
    cached: bool = False


def reference_key(meta: dict) -> str:
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:20]


def load_reference_images(dataset: str, *, data_dir=None, split: str = "test", n: int | None = None, seed: int = 0,
                          image_size: int | None = None, channels: int | None = None):
    try:
        return load_dataset(dataset, data_dir=data_dir, split=split, image_size=image_size, channels=channels,
                            n=n, seed=seed)
    except ValueError as e:
        raise UserError(str(e)) from None


def reference_features(extractor, dataset: str, *, data_dir=None, split: str = "test", n: int | None = None,
                       seed: int = 0, image_size: int | None = None, channels: int | None = None,
                       cache_dir: str | Path | None = None, use_cache: bool = True) -> Reference:
    """Features of real images (``n`` of the split, a seeded subset; None = all), cached."""
    data = load_reference_images(dataset, data_dir=data_dir, split=split, n=n, seed=seed, image_size=image_size,
                                 channels=channels)
    if data.kind != "image":
        raise UserError(f"dataset {dataset!r} holds points, not images: FID does not apply")
    x = data.x.numpy()
    meta = {"version": CACHE_VERSION, "dataset": data.name, "split": split, "n": len(data), "requested_n": n,
            "seed": seed, "shape": list(data.shape), "pixels_sha256": hashlib.sha256(x.tobytes()).hexdigest(),
            "files": _files_fingerprint(data.source), "feature_net": extractor.name,
            "feature_weights_sha256": extractor.weights_sha256}
    key = reference_key(meta)
    folder = cache_dir_for(data.source, cache_dir)
    path = folder / f"{data.name}-{split}-{len(data)}-{extractor.name.replace(':', '-')}-{key}.npz"
    if use_cache and path.is_file():
        z = np.load(path, allow_pickle=False)
        stored = json.loads(str(z["meta"]))
        if stored == meta:
            logits = z["logits"] if z["logits"].size else None
            return Reference(z["features"], logits, z["mu"], z["sigma"], meta, path, cached=True)
    feats, logits = extractor(to_model_range(data.x))
    mu, sigma = feature_stats(feats)
    ref = Reference(feats, logits, mu, sigma, meta, path)
    if use_cache:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".tmp-{os.getpid()}.npz")
            np.savez(tmp, features=feats, logits=logits if logits is not None else np.zeros(0), mu=mu, sigma=sigma,
                     meta=np.array(json.dumps(meta)))
            os.replace(tmp, path)
        except OSError:
            ref.path = None  # caching is an optimisation; a read-only cache is not an error
    return ref


__all__ = ["Reference", "reference_features", "load_reference_images", "cache_dir_for", "user_cache_dir"]
