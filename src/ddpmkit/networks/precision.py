"""Mixed precision for a network's forward pass, on CUDA and on CPUs with native bf16.

``precision`` is ``"fp32"``, ``"bf16"`` or ``"fp16"``.  Only the network runs under
``torch.autocast``: its output is cast back to float32 before anything else sees it, so the
parameters, AdamW's state, the float64 schedules, the losses and the samplers' arithmetic stay in
full precision.  bf16 runs on CUDA and on CPUs with native bf16 instructions (AVX512_BF16 or AMX,
as oneDNN reports them); elsewhere it falls back to fp32 with one line saying so.  fp16 is CUDA only
(with the trainer's GradScaler).

The memory layout goes with the precision (:func:`layout_for`): under CPU bf16 autocast a network
that can switch (the U-Net's ``set_channels_last``) runs in NCHW; everywhere else it keeps its own
layout.  Provisional: one speed run on an AMX Xeon had NCHW bf16 faster at every benchmark shape, a
second run (benchmarks/results/unet_speed_xeon-amx.json, ``ours`` vs ``ours-cl``) had channels_last
faster on the CIFAR-10 U-Net; to be re-measured before it is relied on.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch

from ..argtypes import PRECISION_HELP, PRECISIONS


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512_BF16 or AMX), as oneDNN sees it."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(precision: str, device: torch.device | str) -> tuple[torch.dtype | None, str | None]:
    """The autocast dtype for ``precision`` on ``device`` (None: plain fp32) and, when the request
    falls back to fp32, the one line that says why."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    kind = torch.device(device).type
    if precision == "fp32":
        return None, None
    if kind == "cuda":
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            return None, "precision bf16: this GPU has no bf16 support; running in fp32"
        return (torch.bfloat16 if precision == "bf16" else torch.float16), None
    if kind == "cpu" and precision == "bf16":
        if cpu_has_native_bf16():
            return torch.bfloat16, None
        return None, ("precision bf16: this CPU has no native bf16 (AVX512_BF16 or AMX), where it would be "
                      "slower than fp32; running in fp32")
    return None, f"precision {precision}: autocast in {precision} applies on CUDA only; running in fp32 on {kind}"


def channels_last_for(device: torch.device | str, dtype: torch.dtype | None) -> bool | None:
    """The layout a switchable network should run in under this autocast dtype: False (NCHW) for
    bf16 on CPU, None (its own choice) otherwise."""
    return False if dtype == torch.bfloat16 and torch.device(device).type == "cpu" else None


def use_layout_for(model, device: torch.device | str, dtype: torch.dtype | None) -> bool | None:
    """Switch ``model`` to the layout :func:`channels_last_for` picks, if it can switch and is not in it
    already; returns the layout it had (``channels_last``), or None when nothing changed.  Call it
    before an optimizer is built on the weights (the trainer does)."""
    want, had = channels_last_for(device, dtype), getattr(model, "channels_last", None)
    if want is None or had is None or want == had or not hasattr(model, "set_channels_last"):
        return None
    model.set_channels_last(want)
    return had


@contextmanager
def layout_for(model, device: torch.device | str, dtype: torch.dtype | None):
    """The block runs with ``model`` in the layout for this precision; its own comes back afterwards."""
    had = use_layout_for(model, device, dtype)
    try:
        yield model
    finally:
        if had is not None:
            model.set_channels_last(had)


def autocast(device: torch.device | str, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype`` on ``device``'s kind, or a no-op context for None."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def with_autocast(model_fn, device: torch.device | str, dtype: torch.dtype | None):
    """``model_fn`` run under autocast, its output cast to float32; ``model_fn`` itself for None.
    A ``num_classes`` attribute (what the samplers' guidance check reads) is kept."""
    if dtype is None:
        return model_fn

    def fn(*args, **kwargs):
        with autocast(device, dtype):
            out = model_fn(*args, **kwargs)
        return out.float()

    if hasattr(model_fn, "num_classes"):
        fn.num_classes = model_fn.num_classes
    return fn


__all__ = ["PRECISIONS", "PRECISION_HELP", "cpu_has_native_bf16", "autocast_dtype", "channels_last_for",
           "use_layout_for", "layout_for", "autocast", "with_autocast"]
