"""The command line: every command's --help, real runs on a tiny checkpoint, and bad input -> exit 2."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ddpmkit.cli import main
from ddpmkit.data import to_uint8
from ddpmkit.testing.tiny import tiny_overrides, toy_overrides

COMMANDS = ["train", "sample", "forward", "info", "export", "plot", "demo"]


def assert_drawn(path, min_w: int) -> None:
    """A picture at least ``min_w`` pixels wide with something drawn on it (not one flat colour)."""
    img = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
    assert img.shape[1] >= min_w, f"{path}: {img.shape[1]} px wide"
    assert img.std() > 5 and (img < 128).mean() > 0.001, f"{path} looks blank"


@pytest.mark.parametrize("command", COMMANDS)
def test_help_explains_each_command(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ddpmkit " + command) and "--" in out


def test_module_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "ddpmkit", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "sample" in proc.stdout


def test_sample_writes_grid_npy_and_trajectory(tiny_run, tmp_path, capsys):
    out = tmp_path / "grid.png"
    code = main(["sample", "--checkpoint", str(tiny_run), "-n", "100", "--sampler", "ddpm", "--out", str(out),
                 "--npy", str(tmp_path / "x.npy"), "--trajectory", "19,10,0", "--no-progress"])
    assert code == 0
    x = np.load(tmp_path / "x.npy")
    assert x.shape == (100, 1, 8, 8) and x.min() >= -1 and x.max() <= 1
    # the PNG is exactly the 10 x 10 grid of these samples: 8x8 cells upscaled x4, 2 px white borders
    png = np.asarray(Image.open(out))
    assert png.shape == (4 * (2 + 10 * 10), 4 * (2 + 10 * 10))
    cells = to_uint8(torch.from_numpy(x)).numpy()[:, 0]
    for i in (0, 37, 99):
        top, left = 4 * (2 + (i // 10) * 10), 4 * (2 + (i % 10) * 10)
        assert np.array_equal(png[top:top + 32:4, left:left + 32:4], cells[i])
    assert (png[:8] == 255).all()  # the border
    assert_drawn(tmp_path / "grid_trajectory.png", min_w=3 * 32)
    printed = capsys.readouterr().out
    assert "t = 19, 10, 0" in printed


def test_same_seed_same_samples(tiny_run, tmp_path):
    for name in ("a", "b"):
        assert main(["sample", "--checkpoint", str(tiny_run), "-n", "6", "--sampler", "ddim", "--steps", "5",
                     "--eta", "1", "--out", str(tmp_path / f"{name}.png"), "--npy", str(tmp_path / f"{name}.npy"),
                     "--no-progress"]) == 0
    assert np.array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))


def test_sample_spacing_is_the_samplers_spacing(tiny_run, tmp_path):
    """--spacing reaches the sampler: the CLI's quadratic DDIM equals the library call on the same x_T,
    and differs from the default (uniform) steps."""
    from ddpmkit.runs import load_run, model_fn_of
    from ddpmkit.samplers import ddim_sample

    arrays = {}
    for spacing in ("quadratic", None):
        name = spacing or "default"
        args = ["sample", "--checkpoint", str(tiny_run), "-n", "4", "--sampler", "ddim", "--steps", "4",
                "--out", str(tmp_path / f"{name}.png"), "--npy", str(tmp_path / f"{name}.npy"), "--no-progress"]
        assert main(args + (["--spacing", spacing] if spacing else [])) == 0
        arrays[name] = np.load(tmp_path / f"{name}.npy")
    run = load_run(str(tiny_run))
    x_T = torch.randn((4, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    want = ddim_sample(model_fn_of(run.model), run.process, x_T, steps=4, spacing="quadratic", clip_x0=True)
    np.testing.assert_allclose(arrays["quadratic"], want.numpy(), rtol=0, atol=1e-6)
    assert not np.allclose(arrays["quadratic"], arrays["default"])


def test_info_and_forward_and_plot(tiny_run, tmp_path, capsys):
    assert main(["info", str(tiny_run)]) == 0
    out = capsys.readouterr().out
    assert "step         4" in out and "parameters" in out and "digits" in out
    assert main(["info", str(tiny_run), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["step"] == 4 and info["network"]["kind"] == "unet"
    img = tmp_path / "in.png"
    Image.fromarray((np.arange(256).reshape(16, 16)).astype(np.uint8)).save(img)
    assert main(["forward", "--image", str(img), "--steps", "0,500,999", "--out", str(tmp_path / "f.png")]) == 0
    assert main(["forward", "--checkpoint", str(tiny_run), "--out", str(tmp_path / "g.png")]) == 0
    assert main(["plot", "loss", str(tiny_run), "--out", str(tmp_path / "loss.png")]) == 0
    assert main(["plot", "schedules", "--out", str(tmp_path / "s.png")]) == 0
    for name in ("f.png", "g.png", "loss.png", "s.png"):
        assert_drawn(tmp_path / name, min_w=300)
    # the strip shows the input image (x0) then 3 noisier copies: wider than tall
    w, h = Image.open(tmp_path / "f.png").size
    assert w > 2 * h


def test_export_writes_ema_only_copy_that_samples_identically(tiny_run, tmp_path, capsys):
    from ddpmkit.checkpoint import find_checkpoint
    from ddpmkit.runs import load_run

    out = tmp_path / "slim"
    assert main(["export", str(tiny_run), "--out", str(out)]) == 0
    assert sorted(f.name for f in out.iterdir()) == ["ema.safetensors", "state.json"]
    full_size = sum(f.stat().st_size for f in find_checkpoint(tiny_run).iterdir())
    assert sum(f.stat().st_size for f in out.iterdir()) < full_size / 2  # no raw weights, no optimizer
    original, slim = load_run(tiny_run), load_run(out)
    assert slim.checkpoint.step == original.checkpoint.step and slim.uses_ema
    for k, v in original.model.state_dict().items():  # the original loads its EMA weights by default
        assert torch.equal(v, slim.model.state_dict()[k]), k
    for name, ckpt in (("a", tiny_run), ("b", out)):
        assert main(["sample", "--checkpoint", str(ckpt), "-n", "4", "--steps", "3", "--out",
                     str(tmp_path / f"{name}.png"), "--npy", str(tmp_path / f"{name}.npy"), "--no-progress"]) == 0
    assert np.array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))
    capsys.readouterr()
    # never replaces a non-empty directory without --force
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    assert main(["export", str(tiny_run), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    assert main(["export", str(tiny_run), "--out", str(out), "--force", "--raw"]) == 0
    assert sorted(f.name for f in out.iterdir()) == ["model.safetensors", "state.json"]
    assert not load_run(out).uses_ema


def _error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ddpmkit: error: ")
    return err[0]


def test_bad_input_is_one_line_and_exit_2(tiny_run, tmp_path, capsys):
    cfg = "configs/digits.toml"
    assert main(["train", "--config", cfg, "--set", "train.lrr=1"]) == 2
    assert "valid keys: steps" in _error(capsys)
    assert main(["train", "--config", cfg, "--set", "train.steps=many"]) == 2
    assert "must be an integer" in _error(capsys)
    assert main(["train", "--config", cfg, "--set", "data.name=fashion-mnist", "--set",
                 f'data.data_dir="{tmp_path / "nowhere"}"', "--set", f'run.out_dir="{tmp_path / "r"}"']) == 2
    assert "apt-get install dataset-fashion-mnist" in _error(capsys)
    assert main(["train", "--config", cfg, "--set", "data.image_size=10", "--set", "model.preset=fashion-mnist",
                 "--set", f'run.out_dir="{tmp_path / "r2"}"']) == 2
    assert "not divisible by 4" in _error(capsys)
    assert main(["sample", "--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "x.png")]) == 2
    assert "no run or checkpoint" in _error(capsys)
    assert main(["sample", "--checkpoint", str(tiny_run), "--guidance", "3", "-n", "2",
                 "--out", str(tmp_path / "x.png"), "--no-progress"]) == 2
    assert "class-conditional" in _error(capsys)
    assert main(["sample", "--checkpoint", str(tiny_run), "--steps", "50", "-n", "2",
                 "--out", str(tmp_path / "x.png"), "--no-progress"]) == 2
    assert "1..20" in _error(capsys)
    assert main(["forward", "--image", str(tmp_path / "missing.png"), "--out", str(tmp_path / "f.png")]) == 2
    assert "cannot read image" in _error(capsys)
    assert not (tmp_path / "x.png").exists()


def test_resume_on_other_architecture_exits_2_and_keeps_files(tmp_path, capsys):
    run = tmp_path / "run"
    sets = toy_overrides(run, 2)
    args = ["train", "--config", "configs/toy2d.toml", "--no-progress"] + [a for s in sets for a in ("--set", s)]
    assert main(args) == 0
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and "tensorboard" not in p.parts}
    capsys.readouterr()
    assert main(args + ["--set", "model.options={ hidden = 48, num_layers = 2 }", "--resume"]) == 2
    assert "would change what this run trains (model.options" in _error(capsys)
    assert main(args) == 2
    assert "pass --resume" in _error(capsys)
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and "tensorboard" not in p.parts}
    assert before == after


def test_class_conditional_sampling_with_guidance(tmp_path, capsys):
    from ddpmkit.config import load_config
    from ddpmkit.training.trainer import train

    run = tmp_path / "cond"
    train(load_config("configs/digits.toml", tiny_overrides(run, 2, **{"data.class_conditional": "true"})),
          progress=False)
    assert main(["sample", "--checkpoint", str(run), "-n", "4", "--class", "3", "--guidance", "2", "--steps", "4",
                 "--out", str(tmp_path / "c.png"), "--npy", str(tmp_path / "c.npy"), "--no-progress"]) == 0
    assert np.load(tmp_path / "c.npy").shape == (4, 1, 8, 8)
    assert main(["sample", "--checkpoint", str(run), "-n", "4", "--class", "11", "--guidance", "2",
                 "--out", str(tmp_path / "d.png"), "--no-progress"]) == 2
    assert "labels must be in 0..9" in _error(capsys)


def test_an_option_the_sampler_does_not_take_is_an_error(tiny_run, tmp_path, capsys):
    """--eta used to be dropped silently for every sampler but ddim."""
    for sampler in ("ddpm", "dpm++", "heun"):
        assert main(["sample", "--checkpoint", str(tiny_run), "--sampler", sampler, "--eta", "1", "-n", "2",
                     "--out", str(tmp_path / "x.png"), "--no-progress"]) == 2
        assert f"sampler '{sampler}' takes no option 'eta'" in _error(capsys)
    assert not (tmp_path / "x.png").exists()
