"""The learning rate of each training step: linear warm-up, then constant or a decay (a pure function)."""

from __future__ import annotations

import math

LR_SCHEDULES = ("constant", "cosine", "linear")


def lr_at(step: int, *, lr: float, warmup: int = 0, steps: int = 0, schedule: str = "constant",
          lr_min: float = 0.0, decay_start: int = 0) -> float:
    """The learning rate of step ``step`` (0-based) of a ``steps``-step run.

    * warm-up (``warmup`` > 0): ``lr * (step + 1) / warmup`` for the first ``warmup`` steps;
    * then ``constant``: ``lr``;
      ``cosine``: ``lr_min + (lr - lr_min) (1 + cos(pi p)) / 2`` (Loshchilov & Hutter 2017, SGDR,
      without restarts), ``linear``: ``lr + (lr_min - lr) p``, with p = (step - warmup) /
      (steps - 1 - warmup) going from 0 at the first step after warm-up to 1 at the last step
      (``steps - 1``), where the rate is ``lr_min``; p is clamped to [0, 1].
    """
    if warmup > 0 and step < warmup:
        return lr * ((step + 1) / warmup)   # (the float rounding of earlier ddpmkit versions)
    if schedule == "constant":
        return lr
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; valid: {', '.join(LR_SCHEDULES)}")
    start = max(warmup, decay_start)
    p = min(1.0, max(0.0, (step - start) / max(1, steps - 1 - start)))
    if schedule == "cosine":
        return lr_min + (lr - lr_min) * 0.5 * (1.0 + math.cos(math.pi * p))
    return lr + (lr_min - lr) * p
