"""Checks that run before any work: a whole config, output places, devices, and command arguments.

Every failure is a ``UserError`` naming the key (``train.lr``), option (``--out``) or file, so the CLI
prints one line and exits 2 with nothing created or changed.  Names of samplers, losses, schedules,
datasets, ... come from the modules that own them, never from a copy here.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import Config
from .errors import UserError

SEED_RANGE = (-(2**63), 2**63 - 1)   # what torch.Generator.manual_seed takes (derive_seed folds the rest)
CHECKPOINT_SECTIONS = ("diffusion", "model", "data")   # what a resumed run may not change
# [data] keys that choose how the same items are stored and read, not which items (a prepared copy
# trains bit-identically to the in-memory set): a resumed run may change them
HOW_NOT_WHAT = ("data.storage", "data.prepared_dir", "data.workers")
# names owned by training/ (a floor above this one, so not importable here; tests/training checks they agree)
LR_SCHEDULES = ("constant", "cosine", "linear")     # training.lr.LR_SCHEDULES
EMA_KINDS = ("exponential", "power")                # training.ema.EMA_KINDS
MAX_EMA_STD = 12 ** -0.5                            # training.ema.MAX_SIGMA_REL (power EMA exponent 0)


# --- single values ----------------------------------------------------------------------------

def _finite(where: str, v: float) -> None:
    if not math.isfinite(v):
        raise UserError(f"{where} must be a finite number, got {v!r}")


def at_least(lo: float) -> Callable[[str, Any], None]:
    def check(where: str, v) -> None:
        _finite(where, v)
        if v < lo:
            raise UserError(f"{where} must be >= {lo}, got {v!r}")
    return check


def positive(where: str, v) -> None:
    _finite(where, v)
    if v <= 0:
        raise UserError(f"{where} must be > 0, got {v!r}")


def between(lo: float, hi: float, *, below_hi: bool = False) -> Callable[[str, Any], None]:
    def check(where: str, v) -> None:
        _finite(where, v)
        if not (lo <= v < hi if below_hi else lo <= v <= hi):
            raise UserError(f"{where} must lie in [{lo}, {hi}{')' if below_hi else ']'}, got {v!r}")
    return check


def one_of(names) -> Callable[[str, Any], None]:
    names = tuple(names)

    def check(where: str, v) -> None:
        if v not in names:
            raise UserError(f"{where} = {v!r} is not one of: {', '.join(map(str, names))}")
    return check


def _in_open_closed(lo: float, hi: float) -> Callable[[str, Any], None]:
    def check(where: str, v) -> None:
        _finite(where, v)
        if not lo < v <= hi:
            raise UserError(f"{where} must lie in ({lo}, {hi:.4g}], got {v!r}")
    return check


def _pair_in_unit_interval(where: str, v) -> None:
    if len(v) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in v):
        raise UserError(f"{where} must be two numbers [beta1, beta2], got {list(v)!r}")
    for i, b in enumerate(v):
        between(0.0, 1.0, below_hi=True)(f"{where}[{i}]", b)


def _dataset_name(where: str, v) -> None:
    from .data.dataset import DataError
    from .data.passed import PASSED_NAMES
    from .data.registry import _normalise

    if v in PASSED_NAMES:  # data passed in Python; the trainer refuses the name without the data
        return
    try:
        _normalise(v)
    except DataError as e:
        raise UserError(f"{where}: {e}") from None


def _schedule(where: str, v) -> None:
    from .diffusion.schedules import get_betas

    try:
        get_betas(v, 2)
    except ValueError as e:
        raise UserError(f"{where}: {e}") from None


def _rules() -> dict[str, Callable[[str, Any], None]]:
    from .data.prepared import STORAGES
    from .diffusion.losses import LOSS_TYPES, LOSS_WEIGHTINGS
    from .diffusion.parameterization import PREDICTIONS, VARIANCES
    from .diffusion.timesteps import TIMESTEP_SAMPLERS
    from .samplers import SAMPLERS

    return {
        "run.seed": between(*SEED_RANGE), "run.device": check_device, "run.threads": at_least(0),
        "run.out_dir": check_output_dir,
        "data.name": _dataset_name, "data.image_size": at_least(0), "data.channels": one_of((0, 1, 3)),
        "data.n": at_least(0), "data.storage": one_of(STORAGES), "data.workers": at_least(0),
        "diffusion.schedule": _schedule, "diffusion.timesteps": at_least(1),
        "diffusion.prediction": one_of(PREDICTIONS), "diffusion.variance": one_of(VARIANCES),
        "diffusion.loss": one_of(LOSS_TYPES), "diffusion.timestep_sampler": one_of(("auto", *TIMESTEP_SAMPLERS)),
        "diffusion.lognormal_mean": _finite, "diffusion.lognormal_std": positive,
        "diffusion.loss_weighting": one_of(LOSS_WEIGHTINGS), "diffusion.min_snr_gamma": positive,
        "diffusion.p2_gamma": at_least(0), "diffusion.p2_k": positive,
        "model.kind": one_of(("unet", "mlp")),
        "train.steps": at_least(0), "train.batch_size": at_least(1), "train.grad_accum": at_least(1),
        "train.lr": positive, "train.weight_decay": at_least(0), "train.adam_betas": _pair_in_unit_interval,
        "train.warmup": at_least(0), "train.grad_clip": at_least(0), "train.ema_decay": between(0, 1),
        "train.lr_schedule": one_of(LR_SCHEDULES), "train.lr_min": at_least(0),
        "train.lr_decay_start": at_least(0),
        "train.ema": one_of(EMA_KINDS), "train.ema_std": _in_open_closed(0.0, MAX_EMA_STD),
        "train.precision": one_of(("fp32", "bf16", "fp16")), "train.cond_drop_prob": between(0, 1),
        "train.log_every": at_least(1), "train.sample_every": at_least(0), "train.sample_n": at_least(1),
        "train.sample_sampler": one_of(SAMPLERS), "train.sample_steps": at_least(1),
        "train.checkpoint_every": at_least(0), "train.keep_checkpoints": at_least(0),
    }


def check_config(cfg: Config, world_size: int = 1) -> None:
    """Every field of ``cfg`` in range and every name known; the run's output place writable."""
    plain = cfg.to_dict()
    for key, rule in _rules().items():
        section, name = key.split(".")
        rule(key, plain[section][name])
    d, t = cfg.diffusion, cfg.train
    from .diffusion.parameterization import LEARNED_VARIANCES

    if d.loss == "hybrid" and d.variance not in LEARNED_VARIANCES:
        raise UserError("diffusion.loss = 'hybrid' trains the variance: it needs diffusion.variance = "
                        + " or ".join(repr(v) for v in LEARNED_VARIANCES))
    from .diffusion.losses import LossWeighting, check_loss_weighting

    try:
        check_loss_weighting(LossWeighting(d.loss_weighting), d.loss, d.prediction)
    except ValueError as e:
        raise UserError(f"diffusion.loss_weighting: {e}") from None
    if t.lr_schedule != "constant" and t.lr_min > t.lr:
        raise UserError(f"train.lr_min = {t.lr_min!r} must not exceed train.lr = {t.lr!r} (the schedule decays "
                        "from train.lr to train.lr_min)")
    if t.lr_schedule != "constant" and t.lr_decay_start and t.lr_decay_start >= t.steps:
        raise UserError(f"train.lr_decay_start = {t.lr_decay_start} must be below train.steps = {t.steps} "
                        "(the decay ends at the last step)")
    if t.batch_size % (world_size * t.grad_accum):
        raise UserError(f"train.batch_size = {t.batch_size} must be divisible by processes x grad_accum "
                        f"= {world_size} x {t.grad_accum} (train.grad_accum)")
    if not cfg.run.out_dir.strip():
        raise UserError("run.out_dir must name a directory")


# --- places and devices -----------------------------------------------------------------------

def _nearest_existing(p: Path) -> Path:
    p = p.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_output_dir(where: str, path: str | Path) -> None:
    """``path`` is, or can become, a writable directory (checked without creating anything)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"{where} {p} exists and is not a directory")
    base = _nearest_existing(p)
    if not base.is_dir():
        raise UserError(f"{where} {p}: {base} is a file, not a directory")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UserError(f"{where} {p}: {base} is not writable")


def check_output_file(where: str, path: str | Path, suffixes: tuple[str, ...] | None = None) -> None:
    """``path`` can be written as a file: not a directory, its folder writable, a known suffix."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{where} {p} is a directory; give a file name")
    if suffixes is not None and p.suffix.lower() not in suffixes:
        raise UserError(f"{where} {p}: unsupported file type {p.suffix or '(none)'!r}; use one of "
                        f"{', '.join(suffixes)}")
    check_output_dir(where, p.parent)


def check_device(where: str, name: str) -> None:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` naming a device this machine has."""
    import torch

    if name in ("auto", "cpu"):
        return
    head, _, index = str(name).partition(":")
    if head != "cuda" or (index and not index.isdigit()):
        raise UserError(f"{where} {name!r} is not a device; valid: auto, cpu, cuda, cuda:N")
    if not torch.cuda.is_available():
        raise UserError(f"{where} {name!r}: CUDA is not available on this machine; use 'cpu'")
    if index and int(index) >= torch.cuda.device_count():
        raise UserError(f"{where} {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def create_output_dir(where: str, path: str | Path) -> Path:
    """``mkdir -p`` with a one-line error (read-only file system, permission, a file in the way)."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {where} {p}: {e.strerror or e}") from None
    return p


# --- resuming ---------------------------------------------------------------------------------

def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and not key.startswith("model.options"):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def resume_changes(stored: dict, given: dict) -> list[str]:
    """Compare the config stored in a checkpoint with the one given to ``--resume``.

    A change to [diffusion], [model] or [data] is refused (the keys are named); the returned list
    describes the allowed changes (``train.steps 4 -> 8``), empty when nothing changed."""
    a, b = _flatten(stored), _flatten(given)
    changed = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and k != "run.out_dir"]
    refused = [k for k in changed if k.split(".")[0] in CHECKPOINT_SECTIONS and k not in HOW_NOT_WHAT]
    if refused:
        detail = "; ".join(f"{k}: {a.get(k)!r} in the checkpoint, {b.get(k)!r} given" for k in refused)
        raise UserError(f"--resume would change what this run trains ({detail}); [diffusion], [model] and "
                        "[data] must match the checkpoint, nothing was overwritten")
    return [f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in changed]


# --- command arguments ------------------------------------------------------------------------

GRID_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf")          # image grids (Pillow), and scatter plots
PLOT_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")  # matplotlib figures
# what --out names, per command: a directory, a file with one of these suffixes (None: any), or (not listed)
# a place the command checks itself
OUT_KINDS = {"export": "dir", "demo": "dir", "rate-distortion": "dir", "sample": GRID_SUFFIXES,
             "forward": PLOT_SUFFIXES, "plot": PLOT_SUFFIXES, "configs": None}


def check_args(args) -> None:
    """Check the arguments of any subcommand by the options it has: devices exist, numbers are in range,
    outputs are writable places, inputs exist.  Called before the command does any work."""
    command = getattr(args, "command", None)
    if getattr(args, "device", None) is not None:
        check_device("--device", args.device)
    for opt in ("eta", "guidance"):
        v = getattr(args, opt, None)
        if v is not None:
            at_least(0)(f"--{opt}", v)
    if getattr(args, "seed", None) is not None:
        between(*SEED_RANGE)("--seed", args.seed)
    for opt in ("index", "class_label", "columns"):
        v = getattr(args, opt, None)
        if v is not None:
            at_least(0)(f"--{opt.replace('_label', '')}", v)
    for opt in ("steps", "trajectory"):
        v = getattr(args, opt, None)
        if isinstance(v, list):
            if not v:
                raise UserError(f"--{opt} needs at least one time index")
            for t in v:
                at_least(0)(f"--{opt}", t)
    if getattr(args, "image", None) and not Path(args.image).is_file():
        raise UserError(f"--image: cannot read image {args.image}: no such file")
    out = getattr(args, "out", None)
    kind = OUT_KINDS.get(getattr(args, "eval_command", None) or command, "unchecked")
    if out is not None and kind == "dir":
        check_output_dir("--out", out)
    elif out is not None and kind != "unchecked":
        check_output_file("--out", out, kind)
    for opt, suffixes in (("npy", (".npy",)), ("json", (".json",)), ("trajectory_out", PLOT_SUFFIXES),
                          ("save_samples", GRID_SUFFIXES)):
        v = getattr(args, opt, None)
        if isinstance(v, str):
            check_output_file(f"--{opt.replace('_', '-')}", v, suffixes)
