"""Moving averages of the weights: exponential (Ho et al. use decay 0.9999) or power-function (EDM2).

The update is avg <- beta_n avg + (1 - beta_n) theta at the n-th update (n = 0, 1, ...); the two
variants differ only in beta_n, a pure function of n (``exponential_beta``, ``power_beta``).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

EMA_KINDS = ("exponential", "power")
MAX_SIGMA_REL = 12 ** -0.5   # gamma = 0: the plain running mean of every weight seen


def exponential_beta(n: int, decay: float, warmup: bool) -> float:
    """``decay``, or with ``warmup`` min(decay, (1 + n) / (10 + n)) so early averages are not dominated
    by the random initialisation."""
    return min(decay, (1.0 + n) / (10.0 + n)) if warmup else decay


def power_beta(n: int, gamma: float) -> float:
    """The power-function EMA of Karras et al. 2024 ("Analyzing and Improving the Training Dynamics of
    Diffusion Models"): beta_t = (1 - 1/t)^(gamma + 1) at update t = n + 1.

    After t updates the average is sum_tau w_tau theta_tau with w_tau = (tau^(gamma+1) -
    (tau-1)^(gamma+1)) / t^(gamma+1), roughly proportional to tau^gamma: its width grows with
    training, so the same gamma suits a run of any length (unlike a fixed decay)."""
    t = n + 1
    return (1.0 - 1.0 / t) ** (gamma + 1.0)


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The power-EMA exponent gamma whose averaging profile has relative width ``sigma_rel``.

    The profile of weights proportional to tau^gamma on [0, t] has mean (gamma+1)/(gamma+2) t and
    standard deviation sigma_rel t with sigma_rel^2 = (gamma+1) / ((gamma+2)^2 (gamma+3)) (Karras et
    al. 2024), i.e. gamma is the largest real root of
    gamma^3 + 7 gamma^2 + (16 - s) gamma + (12 - s), s = 1 / sigma_rel^2.  Needs 0 < sigma_rel <=
    1/sqrt(12) (gamma >= 0)."""
    if not 0.0 < sigma_rel <= MAX_SIGMA_REL:
        raise ValueError(f"sigma_rel must lie in (0, {MAX_SIGMA_REL:.4f}], got {sigma_rel}")
    s = sigma_rel ** -2
    roots = np.roots([1.0, 7.0, 16.0 - s, 12.0 - s])
    return max(0.0, float(roots[np.abs(roots.imag) < 1e-9].real.max()))


class EMA:
    """Keeps ``module``, a frozen copy of the network in eval mode, whose weights are the average.

    ``kind`` 'exponential' (default): beta = ``exponential_beta(n, decay, warmup)``.  'power': beta =
    ``power_beta(n, gamma)`` with ``gamma = sigma_rel_to_gamma(sigma_rel)`` (``decay`` and ``warmup``
    unused).  Integer buffers are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True, *,
                 kind: str = "exponential", sigma_rel: float = 0.1):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        if kind not in EMA_KINDS:
            raise ValueError(f"unknown EMA kind {kind!r}; valid: {', '.join(EMA_KINDS)}")
        self.decay = decay
        self.warmup = warmup
        self.kind = kind
        self.gamma = sigma_rel_to_gamma(sigma_rel) if kind == "power" else None
        self.num_updates = 0
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)

    def current_decay(self) -> float:
        if self.kind == "power":
            return power_beta(self.num_updates, self.gamma)
        return exponential_beta(self.num_updates, self.decay, self.warmup)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        src = model.state_dict()
        for name, avg in self.module.state_dict().items():
            new = src[name]
            if avg.is_floating_point():
                avg.lerp_(new.to(avg.dtype), 1.0 - d)
            else:
                avg.copy_(new)
        self.num_updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], num_updates: int) -> None:
        self.module.load_state_dict(state)
        self.num_updates = int(num_updates)
