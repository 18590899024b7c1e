"""diffusers pipelines in and out: a ``DDPMPipeline`` directory <-> a ddpmkit model and process.

A diffusers pipeline directory (the layout of google/ddpm-cifar10-32)::

    DIR/model_index.json                     {"_class_name": "DDPMPipeline", "unet": [...], "scheduler": [...]}
    DIR/unet/config.json                     UNet2DModel config     } networks/convert_diffusers.py
    DIR/unet/diffusion_pytorch_model.*       weights                }
    DIR/scheduler/scheduler_config.json      the process: betas, T, variance, clipping, prediction type

Out: :func:`write_diffusers_pipeline` writes a ddpmkit U-Net and process so that
``diffusers.DDPMPipeline.from_pretrained(DIR)`` samples with our process.  In:
:func:`read_diffusers_pipeline` rebuilds the network and process from such a directory, so every
ddpmkit sampler runs on it.  diffusers itself is never imported.

How the process settings translate (one table per setting, used both ways):

* betas: diffusers' named schedules (``linear``, ``scaled_linear``, ``squaredcos_cap_v2``,
  ``sigmoid``) are recomputed here in float64 (:func:`diffusers_betas`); on export the first named
  schedule that reproduces our betas is written, else the betas themselves (``trained_betas``), so
  every ddpmkit schedule has an exact equivalent.  diffusers then holds them in float32.
* prediction: eps / x0 / v = ``epsilon`` / ``sample`` / ``v_prediction``.
* variance: fixed_small / fixed_large / learned_range = the diffusers names; ``fixed_small_log`` /
  ``fixed_large_log`` read as the same variances.  diffusers' ``learned`` (a raw log-variance
  output) has no ddpmkit equivalent and is refused.
* clipping: ddpmkit clips the predicted x0 of image models to [-1, 1] (``sample --no-clip`` turns it
  off), so the export writes ``clip_sample = true``, range 1.
* time grid of fewer steps: the export writes diffusers' default ``timestep_spacing = "leading"``
  (the DDIM paper's stride T // n), which is ``--spacing leading`` here; ddpmkit's own default,
  ``uniform``, is diffusers' ``linspace`` (exact for DDPMScheduler; diffusers' DDIMScheduler steps
  to t - T // n whatever the spacing, so only ``leading`` is exact there).

Refused, with the reason: class-conditional models (``DDPMPipeline`` passes no labels), MLP models
(no ``UNet2DModel``), U-Net options without a diffusers block (see ``unet_config_to_diffusers``);
when reading, dynamic thresholding, zero-terminal-SNR rescaling, a clipping range other than 1 and
pipelines other than DDPM/DDIM.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .checkpoint import Checkpoint
from .config import Config, DataSection, DiffusionSection, ModelSection
from .diffusion import GaussianDiffusion
from .diffusion.schedules import SCHEDULES, cosine, from_array, get_betas
from .errors import UserError
from .networks.convert_diffusers import CONFIG_NAME, WEIGHTS_SAFETENSORS, load_diffusers_unet, save_diffusers_unet
from .networks.factory import config_to_dict
from .networks.unet import UNet

INDEX_NAME = "model_index.json"
SCHEDULER_NAME = "scheduler_config.json"
UNET_DIR, SCHEDULER_DIR = "unet", "scheduler"
PREFIX = "diffusers:"
DIFFUSERS_VERSION = "0.25.0"  # the oldest diffusers whose scheduler config has every key written here

PREDICTIONS = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
VARIANCES = {"fixed_small": "fixed_small", "fixed_large": "fixed_large", "learned_range": "learned_range"}
VARIANCES_READ = {**{v: k for k, v in VARIANCES.items()}, "fixed_small_log": "fixed_small",
                  "fixed_large_log": "fixed_large"}
SPACINGS = {"uniform": "linspace", "leading": "leading"}
PIPELINES = ("DDPMPipeline", "DDIMPipeline")
EXPORT_SCHEDULE_NAMES = ("linear", "scaled_linear", "squaredcos_cap_v2")


# --- betas ---------------------------------------------------------------------------------------

def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def diffusers_betas(cfg: dict) -> np.ndarray:
    """The betas a diffusers scheduler config describes, computed in float64 with diffusers' formulas."""
    T = int(cfg.get("num_train_timesteps", 1000))
    if cfg.get("trained_betas") is not None:
        try:
            return get_betas(list(cfg["trained_betas"]), T)
        except ValueError as e:
            raise UserError(f"scheduler trained_betas: {e}") from None
    start, end = float(cfg.get("beta_start", 0.0001)), float(cfg.get("beta_end", 0.02))
    name = cfg.get("beta_schedule", "linear")
    if name == "linear":
        betas = np.linspace(start, end, T, dtype=np.float64)
    elif name == "scaled_linear":
        betas = np.linspace(start**0.5, end**0.5, T, dtype=np.float64) ** 2
    elif name == "squaredcos_cap_v2":
        betas = cosine(T)  # Nichol & Dhariwal's cosine, s = 0.008, betas capped at 0.999: diffusers' formula
    elif name == "sigmoid":
        betas = _sigmoid(np.linspace(-6.0, 6.0, T, dtype=np.float64)) * (end - start) + start
    else:
        raise UserError(f"scheduler beta_schedule {name!r} has no ddpmkit equivalent; supported: linear, "
                        "scaled_linear, squaredcos_cap_v2, sigmoid, or trained_betas")
    try:
        return from_array(betas)
    except ValueError as e:
        raise UserError(f"scheduler beta_schedule {name!r}: {e}") from None


def _schedule_keys(betas: np.ndarray) -> dict:
    """``beta_schedule`` / ``beta_start`` / ``beta_end`` / ``trained_betas`` that give exactly ``betas``."""
    T = betas.size
    for name in EXPORT_SCHEDULE_NAMES:
        keys = {"beta_schedule": name, "beta_start": float(betas[0]), "beta_end": float(betas[-1]),
                "trained_betas": None}
        if np.allclose(diffusers_betas({**keys, "num_train_timesteps": T}), betas, rtol=1e-12, atol=0):
            return keys
    return {"beta_schedule": "linear", "beta_start": float(betas[0]), "beta_end": float(betas[-1]),
            "trained_betas": [float(b) for b in betas]}


def schedule_name(betas: np.ndarray) -> str:
    """The ddpmkit schedule name that reproduces ``betas`` at their T, else 'custom'."""
    for name in SCHEDULES:
        if np.allclose(get_betas(name, betas.size), betas, rtol=1e-12, atol=0):
            return name
    return "custom"


# --- out -----------------------------------------------------------------------------------------

def scheduler_config(process: GaussianDiffusion, *, clip_sample: bool = True) -> dict:
    """A ``DDPMScheduler`` config equivalent to ``process`` (errors name what has no equivalent)."""
    if process.prediction not in PREDICTIONS:
        raise UserError(f"prediction {process.prediction!r} has no diffusers scheduler equivalent "
                        f"(diffusers predicts {', '.join(PREDICTIONS)} as {', '.join(PREDICTIONS.values())})")
    if process.variance not in VARIANCES:
        raise UserError(f"variance {process.variance!r} has no diffusers scheduler equivalent")
    if process.timestep_map.tolist() != list(range(process.num_timesteps)):
        raise UserError("a respaced process cannot be exported; export the trained process")
    betas = process.betas.detach().cpu().double().numpy()
    return {
        "_class_name": "DDPMScheduler",
        "_diffusers_version": DIFFUSERS_VERSION,
        "num_train_timesteps": int(betas.size),
        **_schedule_keys(betas),
        "variance_type": VARIANCES[process.variance],
        "prediction_type": PREDICTIONS[process.prediction],
        "clip_sample": bool(clip_sample),
        "clip_sample_range": 1.0,
        "thresholding": False,
        "timestep_spacing": SPACINGS["leading"],
        "steps_offset": 0,
        "rescale_betas_zero_snr": False,
    }


def model_index() -> dict:
    return {"_class_name": "DDPMPipeline", "_diffusers_version": DIFFUSERS_VERSION,
            "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]}


def _check_exportable(model) -> None:
    if not isinstance(model, UNet):
        raise UserError(f"only U-Net models have a diffusers pipeline equivalent (UNet2DModel); this one is "
                        f"{type(model).__name__}")
    if model.config.num_classes is not None:
        raise UserError("a class-conditional model has no DDPMPipeline equivalent (DDPMPipeline passes no class "
                        "labels); networks.save_diffusers_unet writes its U-Net alone")


def is_our_pipeline_export(path: Path) -> bool:
    """A directory holding exactly what :func:`write_diffusers_pipeline` writes (and so may be replaced)."""
    expected = {INDEX_NAME: None, UNET_DIR: {CONFIG_NAME, WEIGHTS_SAFETENSORS}, SCHEDULER_DIR: {SCHEDULER_NAME}}
    entries = {p.name: p for p in path.iterdir()}
    if set(entries) != set(expected) or not entries[INDEX_NAME].is_file():
        return False
    return all(entries[d].is_dir() and {p.name for p in entries[d].iterdir()} == files
               for d, files in expected.items() if files is not None)


@contextmanager
def _staged(out: Path):
    """A temporary sibling of ``out`` to fill; on success it becomes ``out`` (a replaced ``out`` is moved
    aside first and removed last, so ``out`` is never missing), shared-readable (0755 / 0644); on an
    error it is removed and ``out`` is untouched."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
    aside = tmp.with_name(tmp.name + "-old")
    try:
        yield tmp
        for p in [tmp, *tmp.rglob("*")]:  # mkdtemp made it private; an exported model is meant to be shared
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        if out.exists():
            os.rename(out, aside)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(aside, ignore_errors=True)


def write_diffusers_pipeline(model, process: GaussianDiffusion, out_dir: str | os.PathLike, *,
                             clip_sample: bool = True, force: bool = False) -> Path:
    """Write ``model`` (a :class:`UNet`) and ``process`` as a diffusers ``DDPMPipeline`` directory.

    Written into a temporary sibling and renamed into place.  An existing non-empty ``out_dir`` is
    refused; with ``force`` it is replaced only if it holds an earlier pipeline export of this shape."""
    _check_exportable(model)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not force:
            raise UserError(f"{out} exists and is not empty; choose another directory or pass --force")
        if not out.is_dir() or not is_our_pipeline_export(out):
            raise UserError(f"{out} holds something other than a diffusers pipeline export; not replacing it")
    sched = scheduler_config(process, clip_sample=clip_sample)
    with _staged(out) as tmp:
        try:
            save_diffusers_unet(model, tmp / UNET_DIR)
        except ValueError as e:
            raise UserError(f"the U-Net has no diffusers UNet2DModel equivalent: {e}") from None
        (tmp / SCHEDULER_DIR).mkdir()
        (tmp / SCHEDULER_DIR / SCHEDULER_NAME).write_text(json.dumps(sched, indent=2) + "\n")
        (tmp / INDEX_NAME).write_text(json.dumps(model_index(), indent=2) + "\n")
    return out


# --- in ------------------------------------------------------------------------------------------

def pipeline_dir(path: str | os.PathLike) -> Path | None:
    """The pipeline directory ``path`` names: ``diffusers:DIR``, or a DIR holding ``model_index.json``;
    None for anything else (a ddpmkit run or checkpoint)."""
    text = str(path)
    if text.startswith(PREFIX):
        p = Path(text[len(PREFIX):])
        if not (p / INDEX_NAME).is_file():
            raise UserError(f"{p} is not a diffusers pipeline directory (no {INDEX_NAME})")
        return p
    p = Path(text)
    return p if (p / INDEX_NAME).is_file() else None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None


def process_from_scheduler_config(cfg: dict) -> GaussianDiffusion:
    """Our process for a diffusers scheduler config; settings without an equivalent are refused."""
    if cfg.get("thresholding"):
        raise UserError("scheduler thresholding = true (dynamic thresholding) has no ddpmkit equivalent")
    if cfg.get("rescale_betas_zero_snr"):
        raise UserError("scheduler rescale_betas_zero_snr = true (alpha_bar_T = 0) has no ddpmkit equivalent")
    if cfg.get("clip_sample", True) and float(cfg.get("clip_sample_range", 1.0)) != 1.0:
        raise UserError(f"scheduler clip_sample_range = {cfg['clip_sample_range']}: ddpmkit clips x0 to [-1, 1] only")
    prediction = cfg.get("prediction_type", "epsilon")
    pred = {v: k for k, v in PREDICTIONS.items()}.get(prediction)
    if pred is None:
        raise UserError(f"scheduler prediction_type {prediction!r} has no ddpmkit equivalent; supported: "
                        f"{', '.join(PREDICTIONS.values())}")
    variance = cfg.get("variance_type", "fixed_small")  # DDIM configs have none: DDPM's default
    var = VARIANCES_READ.get(variance)
    if var is None:
        raise UserError(f"scheduler variance_type {variance!r} has no ddpmkit equivalent; supported: "
                        f"{', '.join(VARIANCES_READ)}")
    return GaussianDiffusion(diffusers_betas(cfg), prediction=pred, variance=var)


def read_diffusers_pipeline(path: str | os.PathLike):
    """``(config, process, model, checkpoint)`` from a DDPM/DDIM pipeline directory.

    The config is a ddpmkit :class:`Config` describing the process and network (data unknown); the
    checkpoint holds the pipeline's one set of weights as ``model`` (no EMA copy: a pipeline has one)."""
    root = Path(path)
    index = _read_json(root / INDEX_NAME)
    if index.get("_class_name") not in PIPELINES:
        raise UserError(f"{root}: pipeline {index.get('_class_name')!r} is not supported; ddpmkit reads "
                        f"{' and '.join(PIPELINES)} directories (a UNet2DModel and a scheduler)")
    for part in (UNET_DIR, SCHEDULER_DIR):
        if not (root / part).is_dir():
            raise UserError(f"{root}: no {part}/ folder")
    process = process_from_scheduler_config(_read_json(root / SCHEDULER_DIR / SCHEDULER_NAME))
    try:
        model = load_diffusers_unet(root / UNET_DIR)
    except (ValueError, KeyError, FileNotFoundError) as e:
        raise UserError(f"{root / UNET_DIR}: {e}") from None
    network = config_to_dict(model.config)
    if model.config.learn_sigma != (process.variance == "learned_range"):
        raise UserError(f"{root}: the U-Net has {model.config.out_channels} output channels but the scheduler's "
                        f"variance is {process.variance!r}")
    betas = process.betas.numpy()
    cfg = Config(data=DataSection(name="diffusers", image_size=model.config.image_size,
                                  channels=model.config.in_channels),
                 diffusion=DiffusionSection(schedule=schedule_name(betas), timesteps=int(betas.size),
                                            prediction=process.prediction, variance=process.variance),
                 model=ModelSection(kind="unet", preset="diffusers"))
    ckpt = Checkpoint(step=0, config=cfg.to_dict(), network=network, model=model.state_dict(), ema=None,
                      extra={"diffusers_pipeline": str(root)}, path=root)
    return cfg, process, model, ckpt


__all__ = ["schedule_name", "diffusers_betas", "scheduler_config", "model_index", "write_diffusers_pipeline",
           "pipeline_dir", "process_from_scheduler_config", "read_diffusers_pipeline", "is_our_pipeline_export"]
