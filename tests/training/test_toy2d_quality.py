"""configs/toy2d.toml trains in about a minute and its samples match the data.

Distance: sliced Wasserstein-2 between 2,000 samples (DPM-Solver++, 20 steps, EMA weights) and the
held-out test split of the same data set.  The yardstick is the same distance for 2,000 *real*
training points, which only differ by sampling noise; an untrained model (pure noise output) is
far above it.  We require the model to be within 3x the real-vs-real distance.
"""

from pathlib import Path

import torch

from ddpmkit.config import load_config
from ddpmkit.data import load_dataset
from ddpmkit.runs import generate, load_run
from ddpmkit.testing.gaussian_mixture import sliced_wasserstein2
from ddpmkit.training.trainer import train

ROOT = Path(__file__).resolve().parents[2]


def test_toy2d_config_learns_the_data(tmp_path):
    cfg = load_config(ROOT / "configs" / "toy2d.toml", [f'run.out_dir="{tmp_path / "run"}"'])
    train(cfg, progress=False)
    run = load_run(tmp_path / "run")
    samples = generate(run.model, run.process, 2000, (2,), sampler="dpm++", steps=20, seed=0, clip_x0=False)
    test = load_dataset(cfg.data.name, split="test", n=20000, seed=cfg.run.seed).x
    train_pts = load_dataset(cfg.data.name, split="train", n=cfg.data.n, seed=cfg.run.seed).x
    g = torch.Generator().manual_seed(0)
    model_d = sliced_wasserstein2(samples, test, generator=g)
    g = torch.Generator().manual_seed(0)
    real_d = sliced_wasserstein2(train_pts[:2000], test, generator=g)
    noise_d = sliced_wasserstein2(torch.randn(2000, 2, generator=g), test, generator=torch.Generator().manual_seed(0))
    assert model_d < 3 * real_d < noise_d, (model_d, real_d, noise_d)
