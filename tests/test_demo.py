"""`make demo`: the pipeline on a tiny config (default suite) and the real run's quality (slow)."""

from pathlib import Path

import pytest
from PIL import Image

from ddpmkit.demo import run_demo
from ddpmkit.testing.tiny import TINY_UNET

ROOT = Path(__file__).resolve().parents[1]


def test_demo_pipeline_writes_all_pictures_and_reruns_without_training(tmp_path, capsys):
    cfg = tmp_path / "tiny.toml"
    text = (ROOT / "configs" / "digits.toml").read_text()
    assert "options = { ch = 24 }" in text and "timesteps = 1000" in text
    cfg.write_text(text.replace("timesteps = 1000", "timesteps = 20").replace("options = { ch = 24 }",
                                                                            f"options = {TINY_UNET}"))
    out = tmp_path / "demo"
    result = run_demo(out, config=str(cfg), steps=3, progress=False)
    for name in ("samples", "trajectory", "forward", "loss"):
        assert result["paths"][name] == out / f"{name}.png" and Image.open(out / f"{name}.png").size[0] > 0
    w, h = Image.open(out / "samples.png").size
    assert w == h >= 10 * 32  # a 10x10 grid of 8x8 digits upscaled to at least 32 px
    assert 0 <= result["score"]["confident"] <= 1 and 1 <= result["score"]["classes"] <= 10
    first = capsys.readouterr().out
    assert "training tiny.toml for 3 steps" in first and "samples" in first
    run_demo(out, config=str(cfg), steps=3, progress=False)
    assert "already trained (3 steps)" in capsys.readouterr().out


@pytest.mark.slow
def test_real_demo_samples_are_recognisable_digits(tmp_path):
    """The shipped digits classifier must recognise most demo samples, across all ten classes."""
    result = run_demo(tmp_path / "demo", progress=False)
    assert result["score"]["confident"] >= 0.7
    assert result["score"]["classes"] == 10
