"""From a config or a checkpoint to the objects that do the work: process, network, samples.

Shared by the trainer (which builds from a config) and the CLI's ``sample`` / ``eval`` commands
(which rebuild from the checkpoint's stored config alone).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .config import Config, DiffusionSection, config_from_dict
from .diffusion import GaussianDiffusion
from .errors import UserError
from .networks.factory import build_network, config_to_dict, network_config
from .networks.factory import config_from_dict as network_from_dict
from .samplers import get_sampler, sampling_process
from .training.checkpoint import Checkpoint, load_checkpoint


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
    learn_sigma = cfg.diffusion.variance == "learned_range"
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


@dataclass
class LoadedRun:
    config: Config
    process: GaussianDiffusion
    model: nn.Module          # EMA weights when the checkpoint has them (use_ema=True)
    checkpoint: Checkpoint
    uses_ema: bool


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


def load_run(path: str | Path, *, device: str | torch.device = "cpu", use_ema: bool = True,
             require_ema: bool = False) -> LoadedRun:
    ckpt = load_checkpoint(resolve_checkpoint_path(path), map_location="cpu", with_optimizer=False)
    cfg = config_from_dict(ckpt.config)
    process = build_process(cfg.diffusion, device)
    model = build_model(ckpt.network)
    weights = ckpt.model
    if use_ema and ckpt.ema is not None:
        weights = ckpt.ema
    elif require_ema:
        raise UserError(f"checkpoint {ckpt.path} has no EMA weights; pass --no-ema to use the raw weights")
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
             sampler: str = "ddim", steps: int | None = 50, eta: float = 0.0, seed: int = 0,
             y: int | torch.Tensor | None = None, guidance: float | None = None, clip_x0: bool = True,
             spacing: str | None = None, batch_size: int = 256, callback=None, progress: bool = False,
             device: str | torch.device = "cpu") -> torch.Tensor:
    """``n`` samples in model range.  Sample i depends only on (seed, i): the initial noise is drawn
    for all n at once from one generator, so the batch size changes nothing for deterministic
    samplers (ancestral samplers draw per-batch noise from a generator seeded by (seed, batch)).
    ``spacing`` None keeps the sampler's own default (see ``sampling_timesteps``).
    ``callback(step, t, x_t, x0_pred)`` is passed to the sampler for every batch."""
    fn = get_sampler(sampler)
    kwargs = {"steps": steps, "clip_x0": clip_x0, "progress": progress}
    if sampler == "ddim":
        kwargs["eta"] = eta
    if spacing is not None:
        kwargs["spacing"] = spacing
    if steps is not None and steps == process.num_timesteps:
        kwargs["steps"] = None
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn((n, *item_shape), generator=g)
    model_fn = model_fn_of(model)
    if guidance is not None and model_fn.num_classes is None:
        raise UserError("--guidance needs a class-conditional model; this one is unconditional")
    labels = None if y is None else torch.as_tensor(y).reshape(-1).long()
    outs = []
    for start in range(0, n, batch_size):
        xb = x_T[start:start + batch_size].to(device)
        b = xb.shape[0]
        yb = None
        if labels is not None:
            yb = (labels.expand(b) if labels.numel() == 1 else labels[start:start + b]).to(device)
        gen = torch.Generator(device=torch.device(device)).manual_seed(seed * 1_000_003 + start)
        outs.append(fn(model_fn, process, xb, generator=gen, callback=callback, guidance=guidance, y=yb,
                       **kwargs).cpu())
    return torch.cat(outs)


__all__ = ["build_process", "resolve_network_config", "build_model", "load_run", "generate", "LoadedRun",
           "model_fn_of", "sampling_process"]
