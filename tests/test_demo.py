"""`make demo`: the pipeline on a tiny config (default suite) and the real run's quality (slow)."""

import fnmatch
import logging
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ddpmkit
from ddpmkit.data import load_dataset
from ddpmkit.demo import DEFAULT_CONFIG, recognisability, run_demo
from ddpmkit.testing.tiny import TINY_UNET

ROOT = Path(__file__).resolve().parents[1]


def test_demo_config_is_package_data():
    """An installed `ddpmkit demo` finds its config: it sits inside the package and the wheel ships it."""
    pkg = Path(ddpmkit.__file__).resolve().parent
    rel = DEFAULT_CONFIG.relative_to(pkg).as_posix()
    assert DEFAULT_CONFIG.is_file() and rel == "configs/digits.toml"
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["ddpmkit"]
    assert any(fnmatch.fnmatch(rel, p) for p in patterns)
    # the repository's configs/digits.toml is the same file
    assert (ROOT / "configs" / "digits.toml").read_text() == DEFAULT_CONFIG.read_text()


def test_recognisability_tells_digits_from_noise():
    """The demo's score: real test digits are confidently recognised across all 10 classes (measured:
    99 % confident), uniform noise is not (it collapses onto 2 classes)."""
    data = load_dataset("digits", split="test")
    real = recognisability(data.batch(torch.arange(100))[0])
    assert real["confident"] >= 0.95 and real["classes"] == 10
    noise = recognisability(torch.rand(100, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    assert noise["classes"] <= 5


def test_demo_pipeline_writes_all_pictures_and_reruns_without_training(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ddpmkit")  # the library logs; the CLI shows the log
    cfg = tmp_path / "tiny.toml"
    text = (ROOT / "configs" / "digits.toml").read_text()
    assert "options = { ch = 24 }" in text and "timesteps = 1000" in text
    cfg.write_text(text.replace("timesteps = 1000", "timesteps = 20").replace("options = { ch = 24 }",
                                                                            f"options = {TINY_UNET}"))
    out = tmp_path / "demo"
    result = run_demo(out, config=str(cfg), steps=3, progress=False)
    for name in ("samples", "trajectory", "forward", "loss"):
        assert result["paths"][name] == out / f"{name}.png"
        img = np.asarray(Image.open(out / f"{name}.png").convert("L"), dtype=np.float64)
        assert img.std() > 5, f"{name}.png looks blank"
    w, h = Image.open(out / "samples.png").size
    assert w == h == 4 * (2 + 10 * 10)  # a 10x10 grid of 8x8 digits upscaled x4, 2 px borders
    first = caplog.text
    assert "training tiny.toml for 3 steps" in first and "samples" in first
    score = result["score"]
    assert f"confident (p > 0.9) on {score['confident']:.0%} of the 100 samples" in first
    assert f"to {score['classes']} of 10 classes" in first
    caplog.clear()
    run_demo(out, config=str(cfg), steps=3, progress=False)
    assert "already trained (3 steps)" in caplog.text


@pytest.mark.slow
def test_real_demo_samples_are_recognisable_digits(tmp_path):
    """The shipped digits classifier must recognise most demo samples, across all ten classes
    (the README's run: 87 % confident, 10 classes; the bar leaves a margin for other seeds / CPUs)."""
    result = run_demo(tmp_path / "demo", progress=False)
    assert result["score"]["confident"] >= 0.7
    assert result["score"]["classes"] == 10
