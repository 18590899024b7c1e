"""Noise schedules: pure functions from a step count ``T`` to float64 betas.

Every function returns a 1-D ``numpy.float64`` array ``betas`` of length ``T`` with
``0 < beta_t < 1``.  Index ``i`` holds beta_{i+1} in the papers' 1-based notation.

* ``linear``    - Ho et al. 2020: 1e-4 -> 0.02 at T = 1000; for other T the endpoints are
  scaled by 1000 / T (as Improved DDPM does) so that the total noise stays comparable.
* ``cosine``    - Nichol & Dhariwal 2021, eq. 17: alpha_bar(t) = f(t) / f(0),
  f(t) = cos^2(((t / T + s) / (1 + s)) * pi / 2), s = 0.008, betas clipped at 0.999.
* ``sigmoid``   - alpha_bar from a shifted sigmoid (Chen 2023, "On the importance of noise
  scheduling", Algorithm 1 with start -3, end 3, tau 1), clipped at 0.999.
* ``quadratic`` - betas linear in sqrt(beta) between the linear schedule's endpoints.
* ``from_array`` - a user-given sequence, validated.

Named schedules whose betas would reach 1 (``linear`` for T <= 20 because of the 1000 / T
scaling) are clipped at ``MAX_BETA`` so that every named schedule is finite for every T >= 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

MAX_BETA = 0.999


def _check_T(T: int) -> int:
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 1:
        raise ValueError(f"the number of diffusion steps T must be an integer >= 1, got {T!r}")
    return int(T)


def betas_from_alpha_bar(alpha_bar: Callable[[np.ndarray], np.ndarray], T: int,
                         max_beta: float = MAX_BETA) -> np.ndarray:
    """beta_i = 1 - alpha_bar((i+1)/T) / alpha_bar(i/T), clipped at ``max_beta``.

    ``alpha_bar`` maps continuous time in [0, 1] to the cumulative signal fraction.
    """
    T = _check_T(T)
    grid = np.arange(T + 1, dtype=np.float64) / T
    ab = alpha_bar(grid)
    betas = 1.0 - ab[1:] / ab[:-1]
    return np.clip(betas, 0.0, max_beta).astype(np.float64)


def linear(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """DDPM's linear schedule; endpoints scaled by 1000 / T (Improved DDPM, Appendix)."""
    T = _check_T(T)
    scale = 1000.0 / T
    betas = np.linspace(scale * beta_start, scale * beta_end, T, dtype=np.float64)
    return np.minimum(betas, MAX_BETA)


def quadratic(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """sqrt(beta) linear between the (scaled) linear-schedule endpoints."""
    T = _check_T(T)
    scale = 1000.0 / T
    root = np.linspace(math.sqrt(scale * beta_start), math.sqrt(scale * beta_end), T, dtype=np.float64)
    return np.minimum(root**2, MAX_BETA)


def cosine_alpha_bar(u: np.ndarray, s: float = 0.008) -> np.ndarray:
    """alpha_bar at continuous time u in [0, 1]: f(u) / f(0) (Nichol & Dhariwal, eq. 17)."""
    f = np.cos((np.asarray(u, dtype=np.float64) + s) / (1.0 + s) * math.pi / 2) ** 2
    f0 = math.cos(s / (1.0 + s) * math.pi / 2) ** 2
    return f / f0


def cosine(T: int, s: float = 0.008, max_beta: float = MAX_BETA) -> np.ndarray:
    """Improved DDPM's cosine schedule."""
    return betas_from_alpha_bar(lambda u: cosine_alpha_bar(u, s), T, max_beta)


def sigmoid(T: int, start: float = -3.0, end: float = 3.0, tau: float = 1.0,
            max_beta: float = MAX_BETA) -> np.ndarray:
    """alpha_bar(u) = (sig(end/tau) - sig((u (end-start) + start)/tau)) / (sig(end/tau) - sig(start/tau))."""

    def sig(z):
        return 1.0 / (1.0 + np.exp(-z))

    v_start, v_end = sig(start / tau), sig(end / tau)

    def alpha_bar(u):
        return (v_end - sig((u * (end - start) + start) / tau)) / (v_end - v_start)

    return betas_from_alpha_bar(alpha_bar, T, max_beta)


def from_array(betas: Sequence[float] | np.ndarray) -> np.ndarray:
    """A user-given schedule: a 1-D sequence with every beta in the open interval (0, 1)."""
    arr = np.asarray(betas, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"a beta schedule must be a non-empty 1-D sequence, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0) or np.any(arr >= 1):
        bad = arr[~(np.isfinite(arr) & (arr > 0) & (arr < 1))][:3]
        raise ValueError(f"every beta must satisfy 0 < beta < 1; offending values: {bad.tolist()}")
    return arr.copy()


SCHEDULES: dict[str, Callable[..., np.ndarray]] = {
    "linear": linear,
    "cosine": cosine,
    "sigmoid": sigmoid,
    "quadratic": quadratic,
}


def get_betas(schedule: str | Sequence[float] | np.ndarray, T: int | None = None, **kwargs) -> np.ndarray:
    """Betas for a schedule name (with ``T``) or a user-given array (``T`` optional, checked if given)."""
    if isinstance(schedule, str):
        try:
            fn = SCHEDULES[schedule]
        except KeyError:
            raise ValueError(
                f"unknown beta schedule {schedule!r}; valid schedules: {', '.join(sorted(SCHEDULES))}"
                " (or pass an array of betas)"
            ) from None
        if T is None:
            raise ValueError(f"schedule {schedule!r} needs the number of steps T")
        return fn(T, **kwargs)
    arr = from_array(schedule)
    if T is not None and arr.size != T:
        raise ValueError(f"the given betas have {arr.size} steps but T = {T}")
    return arr
