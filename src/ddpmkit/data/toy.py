"""2-D toy distributions, as in the common FFJORD / score-matching toy set-ups.

Every generator takes ``(n, rng)`` and returns ``(points float32 (n, 2), labels int64 (n,) or None,
num_classes or None)``.  Points lie roughly within [-4, 4] with a spread of order 1-2.
"""

from __future__ import annotations

import math

import numpy as np


def swiss_roll(n: int, rng: np.random.Generator):
    """sklearn-style swiss roll (noise 1.0) seen from the side, divided by 5."""
    t = 1.5 * math.pi * (1.0 + 2.0 * rng.random(n))
    pts = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) + rng.standard_normal((n, 2))
    return (pts / 5.0).astype(np.float32), None, None


def two_moons(n: int, rng: np.random.Generator):
    """Two interleaving half circles (noise 0.1), scaled by 2 and centred; label = moon index."""
    y = (rng.random(n) < 0.5).astype(np.int64)
    a = math.pi * rng.random(n)
    upper = np.stack([np.cos(a), np.sin(a)], axis=1)
    lower = np.stack([1.0 - np.cos(a), 0.5 - np.sin(a)], axis=1)
    pts = np.where(y[:, None] == 0, upper, lower) + 0.1 * rng.standard_normal((n, 2))
    pts = pts * 2.0 + np.array([-1.0, -0.5])
    return pts.astype(np.float32), y, 2


def eight_gaussians(n: int, rng: np.random.Generator):
    """Eight Gaussians (std 0.5) on a circle of radius 4, divided by sqrt(2); label = component."""
    y = rng.integers(0, 8, n).astype(np.int64)
    ang = y * (2.0 * math.pi / 8.0)
    centers = 4.0 * np.stack([np.cos(ang), np.sin(ang)], axis=1)
    pts = (centers + 0.5 * rng.standard_normal((n, 2))) / math.sqrt(2.0)
    return pts.astype(np.float32), y, 8


def checkerboard(n: int, rng: np.random.Generator):
    """Uniform on the dark squares of a 4 x 4 checkerboard covering [-4, 4]^2."""
    x1 = rng.random(n) * 4.0 - 2.0
    x2 = rng.random(n) - rng.integers(0, 2, n) * 2.0 + np.floor(x1) % 2
    return (np.stack([x1, x2], axis=1) * 2.0).astype(np.float32), None, None


TOY_SETS = {
    "swiss-roll": swiss_roll,
    "two-moons": two_moons,
    "8gaussians": eight_gaussians,
    "checkerboard": checkerboard,
}
DEFAULT_TOY_N = 10_000


def make_toy(name: str, n: int, seed: int, split: str):
    """Points of a toy set; train and test use independent streams of the same seed."""
    rng = np.random.default_rng([int(seed), 0 if split == "train" else 1])
    return TOY_SETS[name](n, rng)
