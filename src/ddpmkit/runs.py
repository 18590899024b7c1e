"""From a config or a checkpoint to the objects that do the work: process, network, samples.

Shared by the trainer (which builds from a config) and the CLI's ``sample`` / ``eval`` commands
(which rebuild from the checkpoint's stored config alone).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoint import Checkpoint, first_nonfinite, load_checkpoint
from .config import Config, DiffusionSection, config_from_dict
from .diffusers_pipeline import pipeline_dir, read_diffusers_pipeline
from .diffusion import GaussianDiffusion
from .diffusion.parameterization import LEARNED_VARIANCES
from .errors import UserError
from .networks.factory import build_network, config_to_dict, network_config
from .networks.factory import config_from_dict as network_from_dict
from .networks.precision import autocast_dtype, layout_for, with_autocast
from .samplers import default_steps, sample, sampling_process


def pick_device(name: str | torch.device, info=None) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; under DDP (``info``, a
    ``training.distributed.DistInfo``) plain ``cuda`` is this rank's GPU.  The one device rule of the
    library and every command."""
    name = str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r} but CUDA is not available; use 'cpu' or 'auto'")
        if name == "cuda" and info is not None and info.enabled:
            name = f"cuda:{info.local_rank}"
    elif name != "cpu":
        raise UserError(f"unknown device {name!r}; valid: auto, cpu, cuda, cuda:N")
    return torch.device(name)


def default_clip_x0(item_shape: tuple[int, ...]) -> bool:
    """Whether sampling clips the predicted x0 to [-1, 1] unless told otherwise: for images (pixels live
    there), not for points.  The one default of the library (``generate``, ``Pipeline``) and the CLI."""
    return len(item_shape) == 3


def build_process(d: DiffusionSection, device: torch.device | str = "cpu") -> GaussianDiffusion:
    try:
        return GaussianDiffusion.from_schedule(d.schedule, d.timesteps, prediction=d.prediction,
                                               variance=d.variance).to(device)
    except ValueError as e:
        raise UserError(f"[diffusion] {e}") from None


def resolve_network_config(cfg: Config, item_shape: tuple[int, ...], num_classes: int | None) -> dict:
    """The network's config for this data: the preset, the user's options, and what the data fixes
    (channels, size, classes) and the diffusion fixes (learned variance doubles the outputs)."""
    m = cfg.model
    learn_sigma = cfg.diffusion.variance in LEARNED_VARIANCES
    classes = num_classes if cfg.data.class_conditional else None
    if m.kind == "unet":
        if len(item_shape) != 3:
            raise UserError(f"model kind 'unet' needs image data, but {cfg.data.name!r} has items of shape "
                            f"{item_shape}; use model.kind = 'mlp' for points")
        c, h, w = item_shape
        if h != w:
            raise UserError(f"the U-Net needs square images, got {h}x{w}")
        derived = {"in_channels": c, "image_size": h, "num_classes": classes, "learn_sigma": learn_sigma}
    elif m.kind == "mlp":
        if len(item_shape) != 1:
            raise UserError(f"model kind 'mlp' needs vector data, but {cfg.data.name!r} has items of shape "
                            f"{item_shape}; use model.kind = 'unet' for images")
        derived = {"dim": item_shape[0], "num_classes": classes, "learn_sigma": learn_sigma}
    else:
        raise UserError(f"unknown model.kind {m.kind!r}; valid kinds: unet, mlp")
    clash = {k: (v, derived[k]) for k, v in m.options.items() if k in derived and v != derived[k]}
    if clash:
        k, (given, needed) = next(iter(clash.items()))
        raise UserError(f"model.options.{k} = {given!r} does not fit the data/diffusion, which need {needed!r}")
    try:
        net_cfg = network_config(m.kind, m.preset, **{**m.options, **derived})
    except (ValueError, TypeError) as e:
        raise UserError(f"[model] {e}") from None
    return config_to_dict(net_cfg)


def build_model(network: dict, seed: int | None = None) -> nn.Module:
    if seed is not None:
        torch.manual_seed(seed)
    try:
        return build_network(network_from_dict(network))
    except (ValueError, TypeError) as e:
        raise UserError(f"cannot build the network: {e}") from None


def derive_seed(seed: int, offset: int) -> int:
    """The one way a run's seed is mixed with a position (a batch start, a training step and
    stream): a distinct 63-bit seed per (seed, offset)."""
    return (int(seed) * 1_000_003 + int(offset)) % (2**63 - 1)


def item_shape_of(network: dict) -> tuple[int, ...]:
    """The shape of one item a stored network config generates: (C, H, W) or (dim,)."""
    if network.get("kind") == "mlp":
        return (int(network["dim"]),)
    return (int(network["in_channels"]), int(network["image_size"]), int(network["image_size"]))


def balanced_labels(n: int, num_classes: int | None):
    """Labels 0, 1, ..., K-1, 0, 1, ... for n samples (None for an unconditional model)."""
    return None if num_classes is None else torch.arange(n) % int(num_classes)


@dataclass
class LoadedRun:
    """A checkpoint rebuilt for use, and the owner of the facts about its model."""

    config: Config
    process: GaussianDiffusion
    model: nn.Module          # EMA weights when the checkpoint has them (use_ema=True)
    checkpoint: Checkpoint
    uses_ema: bool

    @property
    def item_shape(self) -> tuple[int, ...]:
        return item_shape_of(self.checkpoint.network)

    @property
    def is_image(self) -> bool:
        return len(self.item_shape) == 3

    @property
    def num_classes(self) -> int | None:
        """K for a class-conditional model (labels 0..K-1, K = null), None for an unconditional one."""
        n = self.checkpoint.network.get("num_classes")
        return None if n is None else int(n)

    def balanced_labels(self, n: int):
        return balanced_labels(n, self.num_classes)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


PRETRAINED_DIR = Path(__file__).parent / "pretrained"


def resolve_checkpoint_path(path: str | Path) -> Path:
    """``pretrained:NAME`` names a checkpoint shipped inside the package."""
    text = str(path)
    if text.startswith("pretrained:"):
        name = text.split(":", 1)[1]
        p = PRETRAINED_DIR / name
        if not p.exists():
            have = sorted(q.name for q in PRETRAINED_DIR.iterdir()) if PRETRAINED_DIR.is_dir() else []
            raise UserError(f"no pretrained model {name!r}; available: {', '.join(have) or 'none'}")
        return p
    return Path(path)


def _refuse_nonfinite(weights: dict[str, torch.Tensor], where) -> None:
    bad = first_nonfinite(weights)
    if bad is not None:
        raise UserError(f"checkpoint {where} holds non-finite weights ({bad} has NaN or infinity); it cannot be "
                        "sampled or evaluated: use an earlier checkpoint")


def load_run(path: str | Path, *, device: str | torch.device = "auto", use_ema: bool = True,
             require_ema: bool = False) -> LoadedRun:
    """A run directory, checkpoint directory, ``pretrained:NAME``, or a diffusers DDPM/DDIM pipeline
    directory (``diffusers:DIR``, or any DIR with a ``model_index.json``), rebuilt for sampling.  A
    diffusers pipeline holds one set of weights: they are used as they are (``use_ema`` and
    ``require_ema`` do not apply).  The network comes back in eval mode on ``device`` (see
    :func:`pick_device`)."""
    device = pick_device(device)
    pipe = pipeline_dir(path)
    if pipe is not None:
        cfg, process, model, ckpt = read_diffusers_pipeline(pipe)
        _refuse_nonfinite(model.state_dict(), pipe)
        return LoadedRun(cfg, process.to(device), model.to(device).eval(), ckpt, uses_ema=False)
    ckpt = load_checkpoint(resolve_checkpoint_path(path), map_location="cpu", with_optimizer=False)
    cfg = config_from_dict(ckpt.config)
    process = build_process(cfg.diffusion, device)
    model = build_model(ckpt.network)
    weights = ckpt.model
    if use_ema and ckpt.ema is not None:
        weights = ckpt.ema
    elif require_ema:
        raise UserError(f"checkpoint {ckpt.path} has no EMA weights; pass --no-ema to use the raw weights")
    _refuse_nonfinite(weights, ckpt.path)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise UserError(f"checkpoint {ckpt.path} does not match its stored network config: {e}") from None
    model.to(device).eval()
    return LoadedRun(cfg, process, model, ckpt, uses_ema=use_ema and ckpt.ema is not None)


def model_fn_of(model: nn.Module):
    """The ``model_fn(x_t, t, y=None)`` the samplers call, carrying ``num_classes`` for guidance checks."""
    def fn(x, t, y=None):
        return model(x, t, y=y)
    fn.num_classes = getattr(getattr(model, "config", None), "num_classes", None)
    return fn


@torch.no_grad()
def generate(model: nn.Module, process: GaussianDiffusion, n: int, item_shape: tuple[int, ...], *,
             sampler: str = "ddim", steps: int | None = None, seed: int = 0,
             generator: torch.Generator | None = None,
             y: int | torch.Tensor | None = None, guidance: float | None = None, clip_x0: bool | None = None,
             spacing: str | None = None, batch_size: int = 256, callback=None, progress: bool = False,
             device: str | torch.device | None = None, precision: str = "fp32", **options) -> torch.Tensor:
    """``n`` samples in model range.  The initial noise is drawn for all n at once from one generator
    seeded by ``seed``, so the batch size changes nothing for deterministic samplers (ancestral
    samplers draw per-batch noise from a generator seeded by (seed, batch start)).  The noise does
    depend on n: torch draws large normal tensors in a different order than small ones.
    ``steps`` None is the sampler's default (``samplers.default_steps``), ``spacing`` None its own;
    ``options`` are the sampler's own (``eta`` for ddim, ``order`` for dpm++), others are an error.
    ``callback(step, t, x_t, x0_pred)`` is passed to the sampler for every batch.
    ``generator`` (instead of ``seed``) draws x_T and then every batch's noise, in that order.
    ``clip_x0`` None is :func:`default_clip_x0` (images yes, points no); ``device`` None is the
    model's.  The model runs in eval mode (its mode is restored afterwards).  ``precision`` "bf16"
    (CUDA, or a CPU with native bf16) / "fp16" (CUDA) runs the network under autocast; the sampler's
    arithmetic stays fp32 / float64; where it does not apply, one logged line says it ran in fp32."""
    if steps is None:
        steps = default_steps(sampler, process.num_timesteps)
    if clip_x0 is None:
        clip_x0 = default_clip_x0(item_shape)
    if device is None:
        device = next(iter(model.parameters()), torch.empty(0)).device
    g = generator if generator is not None else torch.Generator().manual_seed(seed)
    x_T = torch.randn((n, *item_shape), generator=g)
    amp_dtype, fallback = autocast_dtype(precision, device)
    if fallback is not None:
        logging.getLogger("ddpmkit").info(fallback)
    model_fn = with_autocast(model_fn_of(model), device, amp_dtype)
    if guidance is not None and model_fn.num_classes is None:
        raise UserError("--guidance needs a class-conditional model; this one is unconditional")
    labels = None if y is None else torch.as_tensor(y).reshape(-1).long()
    outs, was_training = [], model.training
    model.eval()
    try:
        with layout_for(model, device, amp_dtype):  # the layout measured fastest under CPU bf16 (networks/precision.py)
            for start in range(0, n, batch_size):
                xb = x_T[start:start + batch_size].to(device)
                b = xb.shape[0]
                yb = None
                if labels is not None:
                    yb = (labels.expand(b) if labels.numel() == 1 else labels[start:start + b]).to(device)
                gen = generator
                if gen is None:
                    gen = torch.Generator(device=torch.device(device)).manual_seed(derive_seed(seed, start))
                outs.append(sample(sampler, model_fn, process, xb, steps=steps, spacing=spacing, generator=gen,
                                   clip_x0=clip_x0, guidance=guidance, y=yb, callback=callback, progress=progress,
                                   **options).cpu())
    finally:
        model.train(was_training)
    return torch.cat(outs)


__all__ = ["pick_device", "default_clip_x0", "build_process", "resolve_network_config", "build_model", "load_run",
           "generate", "LoadedRun", "balanced_labels", "derive_seed", "item_shape_of", "model_fn_of",
           "sampling_process"]
