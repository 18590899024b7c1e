"""The model-level front door: a network and its process in one object, with the CLI's defaults.

    pipe = ddpmkit.load("pretrained:fashion-mnist")     # a run or checkpoint dir, pretrained:NAME, a diffusers dir
    x = pipe(16, sampler="dpm++", steps=20, generator=torch.Generator().manual_seed(0))  # float in [-1, 1]
    pixels = pipe(16, output="uint8")                    # (16, C, H, W) uint8
    pipe.save_pretrained("my-model")                     # what `ddpmkit export` writes: weights + config
    pipe.save_pretrained("my-pipe", format="diffusers")  # a diffusers DDPMPipeline directory

Defaults are the command line's, from the one place each lives: the sampler's step count
(``samplers.default_steps``), x0 clipping for images but not points (``runs.default_clip_x0``),
device ``auto`` (``runs.pick_device``); the network samples in eval mode.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from .checkpoint import Checkpoint, export_checkpoint, save_checkpoint
from .config import Config, DataSection, DiffusionSection, ModelSection
from .data.pixels import to_uint8
from .diffusers_pipeline import schedule_name, write_diffusers_pipeline
from .diffusion import GaussianDiffusion
from .errors import UserError
from .networks.factory import config_to_dict
from .runs import generate, item_shape_of, load_run, pick_device

log = logging.getLogger(__name__)

OUTPUTS = ("tensor", "uint8")
FORMATS = ("ddpmkit", "diffusers")


class Pipeline:
    """``Pipeline(network, process)``: ``pipe(n, ...)`` samples, ``save_pretrained`` writes, and
    ``Pipeline.from_pretrained`` (= ``ddpmkit.load``) reads every checkpoint form ddpmkit knows."""

    def __init__(self, network: nn.Module, process: GaussianDiffusion, *, sampler: str = "ddim",
                 steps: int | None = None, config: Config | None = None, step: int = 0):
        if not hasattr(network, "config"):
            raise TypeError("network must be a ddpmkit network (UNet or MLPDenoiser: it carries its .config)")
        self.network, self.process = network.eval(), process
        self.sampler, self.steps, self.config, self.step = sampler, steps, config, step

    # --- reading -----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, device: str | torch.device = "auto", use_ema: bool = True,
                        sampler: str = "ddim", steps: int | None = None) -> Pipeline:
        """A run directory, a checkpoint or export directory, ``pretrained:NAME`` or a diffusers
        DDPM/DDIM pipeline directory; EMA weights unless ``use_ema`` is false."""
        run = load_run(path, device=device, use_ema=use_ema)
        return cls(run.model, run.process, sampler=sampler, steps=steps, config=run.config,
                   step=run.checkpoint.step)

    # --- facts -------------------------------------------------------------------------------
    @property
    def network_config(self) -> dict:
        return config_to_dict(self.network.config)

    @property
    def item_shape(self) -> tuple[int, ...]:
        return item_shape_of(self.network_config)

    @property
    def num_classes(self) -> int | None:
        return self.network.config.num_classes

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def to(self, device: str | torch.device) -> Pipeline:
        device = pick_device(device)
        self.network.to(device)
        self.process.to(device)
        return self

    # --- sampling ----------------------------------------------------------------------------
    def __call__(self, n: int, *, sampler: str | None = None, steps: int | None = None,
                 generator: torch.Generator | None = None, seed: int = 0, y=None, guidance: float | None = None,
                 clip_x0: bool | None = None, spacing: str | None = None, output: str = "tensor",
                 batch_size: int = 256, progress: bool = False, precision: str = "fp32",
                 **options) -> torch.Tensor:
        """``n`` samples, (n, C, H, W) images or (n, dim) points: float in [-1, 1] (``output="tensor"``)
        or uint8 pixels (``output="uint8"``, images only).  ``generator`` draws x_T and then the
        sampler's noise; without one, ``seed`` gives the same samples as ``ddpmkit sample --seed``.
        ``options`` are the sampler's own (``eta`` for ddim)."""
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
        if output == "uint8" and len(self.item_shape) != 3:
            raise ValueError("output='uint8' is for image models; this one generates points")
        x = generate(self.network, self.process, n, self.item_shape, sampler=sampler or self.sampler,
                     steps=steps if steps is not None else self.steps, seed=seed, generator=generator, y=y,
                     guidance=guidance, clip_x0=clip_x0, spacing=spacing, batch_size=batch_size, progress=progress,
                     precision=precision, **options)
        return to_uint8(x) if output == "uint8" else x

    # --- writing -----------------------------------------------------------------------------
    def _run_config(self) -> Config:
        if self.config is not None:
            return self.config
        name = schedule_name(self.process.betas.detach().cpu().double().numpy())
        if name == "custom":
            raise UserError("this process's betas are no named ddpmkit schedule, which the ddpmkit format "
                            "stores by name; save_pretrained(..., format='diffusers') stores the betas")
        net = self.network_config
        return Config(data=DataSection(name="custom"),
                      diffusion=DiffusionSection(schedule=name, timesteps=self.process.num_timesteps,
                                                 prediction=self.process.prediction,
                                                 variance=self.process.variance),
                      model=ModelSection(kind=net["kind"], preset="custom"))

    def save_pretrained(self, path: str | os.PathLike, *, format: str = "ddpmkit", force: bool = False) -> Path:
        """Write the pipeline: ``ddpmkit`` is what ``ddpmkit export`` writes (one set of weights and
        the config; ``--checkpoint PATH`` and ``load(PATH)`` read it), ``diffusers`` a DDPMPipeline
        directory.  A non-empty ``path`` is refused unless ``force`` (and then replaced only if it
        holds an earlier export)."""
        if format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
        if format == "diffusers":
            return write_diffusers_pipeline(self.network, self.process, path, force=force)
        weights = {k: v.detach().cpu() for k, v in self.network.state_dict().items()}
        ckpt = Checkpoint(step=self.step, config=self._run_config().to_dict(), network=self.network_config,
                          model=weights, ema=weights)
        staging = Path(tempfile.mkdtemp(prefix=".ddpmkit-save-"))
        try:  # through the one writer of exports, so the result is what `ddpmkit export` gives
            out = export_checkpoint(save_checkpoint(staging, ckpt), path, use_ema=True, force=force)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("wrote %s", out)
        return out

    def __repr__(self) -> str:
        return (f"Pipeline({type(self.network).__name__}, {self.process.extra_repr()}, items {self.item_shape}, "
                f"sampler {self.sampler!r})")


def load(path: str | os.PathLike, **kwargs) -> Pipeline:
    """``Pipeline.from_pretrained(path, **kwargs)``."""
    return Pipeline.from_pretrained(path, **kwargs)


def save(pipe: Pipeline, path: str | os.PathLike, **kwargs) -> Path:
    """``pipe.save_pretrained(path, **kwargs)``."""
    return pipe.save_pretrained(path, **kwargs)


__all__ = ["Pipeline", "load", "save"]
