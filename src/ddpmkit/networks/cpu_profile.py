"""Measure which CPU speed paths (``networks/cpu_fast.py``) pay on this machine, and cache the choice.

``ddpmkit cpu-profile`` (or :func:`profile_cpu_paths`) times whole U-Net steps of the benchmark presets
-- a training step (forward, MSE, backward, fused AdamW) and an inference forward -- with each path on
alone against none of them (torch's own ops), the variants interleaved run by run, plus an A/A control
(none against none) that measures how far two identical variants read apart on this machine now.
:func:`cpu_fast.keep_paths <ddpmkit.networks.cpu_fast.keep_paths>` decides and
:func:`cpu_fast.save_profile <ddpmkit.networks.cpu_fast.save_profile>` writes the per-machine cache that
``DDPMKIT_CPU_FAST=auto`` reads (keyed by CPU vendor / family / model and torch version).

Each path is timed alone, not as "all on minus one": a path that slows a step would otherwise sit in
every baseline and tilt the verdict on the others (it did on an AMX Xeon, where ``conv_weight_grad``
costs 6-12 % of a training step).  Timing needs a quiet machine: run it with nothing else busy.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ..errors import UserError
from . import cpu_fast
from .unet import UNet, unet_preset

# (preset, batch): the cases of benchmarks/unet_speed.py
DEFAULT_CASES: tuple[tuple[str, int], ...] = (("ddpm-cifar10", 8), ("fashion-mnist", 32), ("fashion-mnist", 128))
MODES = ("train", "infer")


class WholeStep:
    """One preset at one batch size: a whole training step or inference forward, on chosen paths."""

    def __init__(self, preset: str, batch: int, seed: int = 0):
        cfg = unet_preset(preset)
        torch.manual_seed(seed)
        self.model = UNet(cfg)
        g = torch.Generator().manual_seed(seed)
        size = cfg.image_size
        self.x = torch.randn(batch, cfg.in_channels, size, size, generator=g)
        self.t = torch.randint(0, 1000, (batch,), generator=g)
        self.target = torch.randn(batch, cfg.out_channels, size, size, generator=g)
        try:  # the trainer's optimizer: fused AdamW where this torch has it on CPU
            self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, fused=True)
        except (RuntimeError, TypeError, ValueError):
            self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)

    def run(self, mode: str, paths: frozenset[str]) -> float:
        """Seconds of one training step (``mode = "train"``) or inference forward with ``paths`` on."""
        self.model.train(mode == "train")
        with cpu_fast.paths(paths):
            start = time.perf_counter()
            if mode == "train":
                loss = F.mse_loss(self.model(self.x, self.t), self.target)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
            else:
                with torch.no_grad():
                    self.model(self.x, self.t)
            return time.perf_counter() - start


def measure(cases: Sequence[tuple[str, int]] = DEFAULT_CASES, repeats: int = 5,
            log: Callable[[str], None] = print) -> dict:
    """Time the variants of every case and mode; returns ``kept`` (the paths the rule keeps), ``ratios``
    (``ratios[path][step]`` = median time without the path / with it alone; > 1: it helps; only the
    steps where the path runs: training-only paths on training steps), ``aa_control`` (median ratio of
    the two ``none`` variants per step) and ``noise`` (the largest distance of those from 1)."""
    if repeats < 1:
        raise UserError(f"repeats must be >= 1, got {repeats}")
    none = frozenset()
    ratios: dict[str, dict[str, float]] = {p: {} for p in cpu_fast.PATHS}
    control: dict[str, float] = {}
    for preset, batch in cases:
        case = WholeStep(preset, batch)
        for mode in MODES:
            judged = [p for p in cpu_fast.PATHS if mode == "train" or p not in cpu_fast.TRAINING_ONLY]
            variants = [none, none] + [frozenset({p}) for p in judged]  # the second `none`: the A/A control
            for v in variants:  # warm-up
                case.run(mode, v)
            secs: list[list[float]] = [[] for _ in variants]
            for _ in range(repeats):
                for k, v in enumerate(variants):
                    secs[k].append(case.run(mode, v))
            step = f"{preset} {mode} b{batch}"
            control[step] = statistics.median(a / b for a, b in zip(secs[1], secs[0], strict=True))
            log(f"  {step:26} A/A control (none vs none)  {control[step]:6.3f}x the time")
            for k, p in enumerate(judged, start=2):
                ratios[p][step] = statistics.median(off / on for off, on in zip(secs[0], secs[k], strict=True))
                log(f"  {step:26} without {p:20} {ratios[p][step]:6.3f}x the time with it")
        del case
    noise = max((abs(1 - r) for r in control.values()), default=0.0)
    return {"kept": cpu_fast.keep_paths(ratios, noise), "ratios": ratios, "aa_control": control, "noise": noise}


def profile_cpu_paths(cases: Sequence[tuple[str, int]] = DEFAULT_CASES, repeats: int = 5,
                      threads: int | None = None, log: Callable[[str], None] = print, save: bool = True) -> dict:
    """:func:`measure` on ``threads`` torch threads (None: as set now), then (``save``) write the kept
    paths to this machine's cache; returns the measurement with ``threads``, ``profile_key`` and
    ``path`` (the cache file, or None) added."""
    for preset, batch in cases:
        try:
            unet_preset(preset)  # an unknown preset is an error before any timing
        except ValueError as e:
            raise UserError(str(e)) from None
        if batch < 1:
            raise UserError(f"batch must be >= 1, got {batch} for {preset}")
    saved_threads = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise UserError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        used = torch.get_num_threads()
        log(f"profiling the CPU speed paths for {cpu_fast.profile_key()}, {used} thread{'s' if used != 1 else ''}, "
            f"{repeats} interleaved run{'s' if repeats != 1 else ''} a variant (keep the machine otherwise idle)")
        found = measure(cases, repeats, log)
    finally:
        torch.set_num_threads(saved_threads)
    found.update(threads=used, repeats=repeats, profile_key=cpu_fast.profile_key(), path=None)
    if save:
        path = cpu_fast.save_profile(found["kept"], {
            "threads": used, "repeats": repeats, "time_without_over_time_with_alone": found["ratios"],
            "aa_control": found["aa_control"], "noise": found["noise"]})
        found["path"] = str(path)
    return found


__all__ = ["DEFAULT_CASES", "MODES", "WholeStep", "measure", "profile_cpu_paths"]
