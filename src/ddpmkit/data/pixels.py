"""The one conversion between stored pixels (uint8, 0..255) and the model's range [-1, 1].

``to_model_range`` maps k -> k / 127.5 - 1 (256 evenly spaced levels, as the discretized
decoder assumes); ``to_uint8`` inverts it with rounding and clamping, so
``to_uint8(to_model_range(x)) == x`` for every uint8 value.
"""

from __future__ import annotations

import numpy as np
import torch


def to_model_range(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 pixels (any shape) -> float32 in [-1, 1]: x / 127.5 - 1."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if x.dtype != torch.uint8:
        raise TypeError(f"to_model_range expects uint8 pixels (0..255), got dtype {x.dtype}")
    return x.to(torch.float32) / 127.5 - 1.0


def to_uint8(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Values in the model range [-1, 1] (any float dtype) -> uint8 pixels, clamped and rounded."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if x.dtype == torch.uint8:
        return x
    if not x.is_floating_point():
        raise TypeError(f"to_uint8 expects floating values in [-1, 1], got dtype {x.dtype}")
    x = x.detach().to(torch.float32)
    return ((x + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
