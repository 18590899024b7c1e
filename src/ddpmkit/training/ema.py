"""Exponential moving average of the weights (Ho et al. use decay 0.9999)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Keeps ``module``, a frozen copy of the network in eval mode, whose weights are the average.

    With ``warmup`` the decay at update n is ``min(decay, (1 + n) / (10 + n))`` so early averages are
    not dominated by the random initialisation.  Integer buffers are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n)) if self.warmup else self.decay

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
