"""Exact reference models for tests and benchmarks (no training needed)."""

from .gaussian_mixture import (
    GaussianMixture,
    circle_mixture,
    gaussian_784,
    mixture_moments,
    sliced_wasserstein2,
)

__all__ = ["GaussianMixture", "circle_mixture", "gaussian_784", "mixture_moments", "sliced_wasserstein2"]
