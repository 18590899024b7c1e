"""Mixed precision for a network's forward pass, on CUDA and on CPUs with native bf16.

``precision`` is ``"fp32"``, ``"bf16"`` or ``"fp16"``.  Only the network runs under
``torch.autocast``: its output is cast back to float32 before anything else sees it, so the
parameters, AdamW's state, the float64 schedules, the losses and the samplers' arithmetic stay in
full precision.  bf16 runs on CUDA and on CPUs with native bf16 instructions (AVX512_BF16 or AMX,
as oneDNN reports them); elsewhere it falls back to fp32 with one line saying so.  fp16 is CUDA only
(with the trainer's GradScaler).

The memory layout goes with the precision (:func:`layout_for`).  Under CPU bf16 autocast neither layout
wins everywhere: on one AMX Xeon (docs/unet.md) channels_last sampled the CIFAR-10 U-Net ~17 % faster
and NCHW 20-50 % faster for the narrow Fashion-MNIST networks.  So a network that can switch (the
U-Net's ``set_channels_last``) runs in whichever layout a short measurement of *that network on this
machine* found faster (:func:`measured_bf16_layout`: forward + backward, both layouts interleaved),
made at first use and cached beside the CPU-path profile (``networks/cpu_fast.py``: keyed by CPU model
and torch version, then by the network's config).  ``DDPMKIT_BF16_LAYOUT`` = ``nchw`` or
``channels_last`` skips the measurement.  Everywhere else a network keeps its own layout.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import statistics
import sys
import time
from contextlib import contextmanager, nullcontext

import torch

from ..argtypes import PRECISION_HELP, PRECISIONS
from ..errors import UserError
from . import cpu_fast

LAYOUT_ENV = "DDPMKIT_BF16_LAYOUT"
LAYOUT_CHOICES = ("auto", "nchw", "channels_last")
LAYOUT_SECTION = "bf16_channels_last"  # the profile entry's section: network key -> measurement
LAYOUT_BATCH, LAYOUT_PAIRS = 8, 5


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


def _switchable(model) -> bool:
    return hasattr(model, "set_channels_last") and getattr(model, "channels_last", None) is not None


def network_key(model) -> str:
    """What a layout measurement is valid for: the network's class and its config (a short hash), the
    layout it starts in left out (both layouts are timed)."""
    cfg = getattr(model, "config", None)
    if dataclasses.is_dataclass(cfg) and any(f.name == "channels_last" for f in dataclasses.fields(cfg)):
        cfg = dataclasses.replace(cfg, channels_last=False)
    text = f"{type(model).__name__} {cfg!r}"
    return f"{type(model).__name__}-{hashlib.sha1(text.encode()).hexdigest()[:16]}"


def time_interleaved(runs: dict, pairs: int, warmup: int = 1) -> dict[object, list[float]]:
    """Seconds of each of two callables ``runs = {a: fn_a, b: fn_b}``, run ``warmup`` times each and then
    ``pairs`` times in alternating order (a b, b a, ...), so slow drift on the machine hits both alike."""
    keys = list(runs)
    for key in keys:
        for _ in range(warmup):
            runs[key]()
    secs = {key: [] for key in keys}
    for i in range(pairs):
        for key in keys if i % 2 == 0 else keys[::-1]:
            start = time.perf_counter()
            runs[key]()
            secs[key].append(time.perf_counter() - start)
    return secs


def _forward_backward(model, x, t) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.inference_mode(False), torch.enable_grad():  # also when called from no_grad / inference code
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, t)
        torch.autograd.grad(out.float().square().mean(), params)  # gradients returned, no .grad touched


def measured_bf16_layout(model, *, batch: int = LAYOUT_BATCH, pairs: int = LAYOUT_PAIRS) -> bool:
    """Whether ``model`` runs faster in channels_last than in NCHW under CPU bf16 autocast, on this
    machine: the cached answer, or (once per network config, CPU model and torch version) a
    measurement -- ``pairs`` forward + backward passes of a ``batch`` of random inputs in each layout,
    interleaved, in eval mode (no dropout, so the global RNG is not touched), median of the per-pair
    ratios.  The model comes back in the layout and mode it had."""
    key = network_key(model)
    hit = cpu_fast.cached(LAYOUT_SECTION, key)
    if isinstance(hit, dict) and isinstance(hit.get("channels_last"), bool):
        return hit["channels_last"]
    cfg = model.config
    print(f"bf16 on this CPU: timing NCHW vs channels_last for this network once "
          f"(cached in {cpu_fast.profile_path()})", file=sys.stderr)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    had, was_training = model.channels_last, model.training
    model.eval()

    def in_layout(channels_last: bool):
        def run():
            model.set_channels_last(channels_last)
            _forward_backward(model, x, t)
        return run

    try:
        secs = time_interleaved({False: in_layout(False), True: in_layout(True)}, pairs)
    finally:
        model.set_channels_last(had)
        model.train(was_training)
    ratios = [a / b for a, b in zip(secs[False], secs[True], strict=True)]
    ratio = statistics.median(ratios)
    cpu_fast.cache(LAYOUT_SECTION, key, {"channels_last": ratio > 1.0, "nchw_over_channels_last": ratio,
                                         "batch": batch, "pairs": pairs, "config": repr(cfg)})
    return ratio > 1.0


def channels_last_for(device: torch.device | str, dtype: torch.dtype | None, model=None, *,
                      known: bool | None = None) -> bool | None:
    """The layout ``model`` should run in under this autocast dtype: for bf16 on CPU, the faster one
    on this machine (``DDPMKIT_BF16_LAYOUT``, else ``known`` -- a layout chosen before, e.g. the one
    a resumed run trained in -- else :func:`measured_bf16_layout`); None (its own choice) otherwise,
    and for a model that cannot switch."""
    if dtype != torch.bfloat16 or torch.device(device).type != "cpu" or not _switchable(model):
        return None
    forced = os.environ.get(LAYOUT_ENV, "auto").strip().lower() or "auto"
    if forced not in LAYOUT_CHOICES:
        raise UserError(f"{LAYOUT_ENV} must be one of {', '.join(LAYOUT_CHOICES)}, got {forced!r}")
    if forced != "auto":
        return forced == "channels_last"
    if known is not None:
        return bool(known)
    return measured_bf16_layout(model)


def use_layout_for(model, device: torch.device | str, dtype: torch.dtype | None) -> bool | None:
    """Switch ``model`` to the layout :func:`channels_last_for` picks, if it can switch and is not in it
    already; returns the layout it had (``channels_last``), or None when nothing changed.  Call it
    before an optimizer is built on the weights (the trainer does)."""
    want, had = channels_last_for(device, dtype, model), getattr(model, "channels_last", None)
    if want is None or want == had:
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
           "measured_bf16_layout", "network_key", "time_interleaved", "LAYOUT_ENV", "use_layout_for", "layout_for",
           "autocast", "with_autocast"]
