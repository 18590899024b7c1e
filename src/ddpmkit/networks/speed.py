"""Optional speed-ups that must never be required: ``torch.compile`` with a clean fallback."""

from __future__ import annotations

import warnings

import torch
from torch import nn

__all__ = ["maybe_compile"]


def maybe_compile(module: nn.Module, example_inputs: tuple | None = None, **compile_kwargs) -> nn.Module:
    """``torch.compile(module)`` when compilation works here, else ``module`` itself (with a warning).

    Compilation is lazy, so pass ``example_inputs`` (e.g. ``(x, t)``) to compile and check it now;
    any failure (no C++ compiler, unsupported platform, ...) falls back to eager mode. Save and load
    weights through the original ``module``: the compiled wrapper prefixes its keys with ``_orig_mod.``.
    """
    if not hasattr(torch, "compile"):
        warnings.warn("torch.compile is not available; running eagerly", stacklevel=2)
        return module
    try:
        compiled = torch.compile(module, **compile_kwargs)
        if example_inputs is not None:
            with torch.no_grad():
                compiled(*example_inputs)
    except Exception as err:  # noqa: BLE001 - any compiler failure means "run eagerly"
        warnings.warn(f"torch.compile failed ({type(err).__name__}: {err}); running eagerly", stacklevel=2)
        return module
    return compiled
