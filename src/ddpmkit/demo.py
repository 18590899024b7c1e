"""``make demo``: train the digits config, then draw samples, a trajectory, a forward strip, the loss."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .checkpoint import find_checkpoint
from .config import load_config, resolve_config_path
from .errors import UserError

log = logging.getLogger(__name__)
# package data, so an installed `ddpmkit demo` finds it (configs/digits.toml in the repository links here)
DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "digits.toml"


def run_demo(out: Path, *, config: str | None = None, steps: int | None = None, progress: bool = True) -> dict:
    from . import viz
    from .runs import generate, load_run
    from .training.trainer import Trainer, load_training_data

    config_path = resolve_config_path(config) if config else DEFAULT_CONFIG
    overrides = [f'run.out_dir="{out / "run"}"'] + ([f"train.steps={steps}"] if steps else [])
    cfg = load_config(config_path, overrides)
    run_dir = Path(cfg.run.out_dir)
    try:
        done = load_run(find_checkpoint(run_dir)).checkpoint.step
    except UserError:
        done = None
    if done is None or done < cfg.train.steps:
        log.info(f"training {config_path.name} for {cfg.train.steps} steps into {run_dir}"
                 + (f" (resuming at step {done})" if done is not None else ""))
        trainer = Trainer(cfg, resume=done is not None, progress=progress)
        result = trainer.train()
        if result.stopped_early:  # Ctrl-C / SIGTERM: the checkpoint is saved; drawing 1000-step pictures now
            log.info(f"stopped at step {result.step}; run the demo again to resume")  # would ignore the request
            return {"paths": {}, "score": None, "stopped_at": result.step}
    else:
        log.info(f"{run_dir} is already trained ({done} steps); drawing the pictures again")

    run = load_run(run_dir)
    item = run.item_shape
    T = run.process.num_timesteps
    paths = {}
    x = generate(run.model, run.process, 100, item, sampler="ddpm", steps=None, seed=0, progress=progress)
    paths["samples"] = out / "samples.png"
    viz.save_grid(x, paths["samples"], nrow=10)

    marks = sorted({T - 1, 3 * T // 4, T // 2, T // 4, 0}, reverse=True)
    recorder = viz.TrajectoryRecorder(marks)
    generate(run.model, run.process, 8, item, sampler="ddpm", steps=None, seed=1, callback=recorder)
    paths["trajectory"] = out / "trajectory.png"
    viz.save_trajectory(recorder.snapshots, paths["trajectory"])

    data = load_training_data(cfg)
    x0 = data.batch(torch.tensor([0]))[0][0]
    paths["forward"] = out / "forward.png"
    viz.save_forward_strip(run.process, x0, paths["forward"], generator=torch.Generator().manual_seed(0))

    paths["loss"] = out / "loss.png"
    viz.plot_loss_curve(run_dir / "metrics.jsonl", paths["loss"])
    score = recognisability(x)
    log.info("demo pictures:")
    for name, p in paths.items():
        log.info(f"  {name:<10} {p}")
    log.info(f"the shipped digits classifier (99.7% test accuracy) is confident (p > 0.9) on {score['confident']:.0%} "
             f"of the 100 samples and assigns them to {score['classes']} of 10 classes")
    return {"paths": paths, "score": score}


@torch.no_grad()
def recognisability(x: torch.Tensor, threshold: float = 0.9) -> dict:
    """How many samples the shipped digits classifier recognises with confidence, and how many classes."""
    from .evaluation.classifier import load_classifier

    probs = load_classifier("digits")(x.float()).softmax(dim=1)
    top, label = probs.max(dim=1)
    return {"confident": float((top > threshold).float().mean()), "classes": int(label.unique().numel()),
            "mean_max_prob": float(top.mean())}
