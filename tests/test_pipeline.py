"""The model-level API: ``ddpmkit.load`` / ``Pipeline`` / ``save_pretrained``, with the CLI's defaults."""

import inspect
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import ddpmkit
from ddpmkit.cli import build_parser, main
from ddpmkit.data import to_uint8
from ddpmkit.diffusion import GaussianDiffusion
from ddpmkit.errors import UserError
from ddpmkit.networks import build_network
from ddpmkit.runs import default_clip_x0, generate, load_run
from ddpmkit.testing.tiny import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


def _parsed(*argv):
    return build_parser().parse_args(list(argv))


def test_library_and_cli_defaults_are_the_same():
    s = _parsed("sample", "--checkpoint", "x", "--out", "y.png")
    e = _parsed("eval", "fid", "--checkpoint", "x")
    for fn in (ddpmkit.Pipeline.from_pretrained, load_run):
        assert inspect.signature(fn).parameters["device"].default == s.device == e.device == "auto"
    assert inspect.signature(ddpmkit.Pipeline.__call__).parameters["seed"].default == s.seed == 0
    assert inspect.signature(ddpmkit.Pipeline).parameters["sampler"].default == s.sampler == "ddim"
    assert inspect.signature(generate).parameters["clip_x0"].default is None and not s.no_clip
    assert default_clip_x0((1, 8, 8)) and not default_clip_x0((2,))  # images are clipped, points never


def test_pipeline_samples_what_ddpmkit_sample_writes(tiny_run, tmp_path):
    npy = tmp_path / "x.npy"
    assert main(["sample", "--checkpoint", str(tiny_run), "-n", "5", "--seed", "3", "--out", str(tmp_path / "x.png"),
                 "--npy", str(npy), "--no-progress"]) == 0
    pipe = ddpmkit.load(tiny_run)
    x = pipe(5, seed=3)
    assert torch.equal(x, torch.from_numpy(np.load(npy)))  # same sampler, steps, clipping and noise by default
    assert x.abs().max() <= 1.0
    assert not torch.equal(x, pipe(5, seed=3, clip_x0=False))  # so clipping is on by default, as in the CLI
    u = pipe(5, seed=3, output="uint8")
    assert u.dtype == torch.uint8 and u.shape == (5, 1, 8, 8)
    assert torch.equal(u, to_uint8(x))
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(pipe(3, sampler="ddpm", steps=4, generator=g1), pipe(3, sampler="ddpm", steps=4, generator=g2))
    with pytest.raises(ValueError, match="output must be"):
        pipe(2, output="pil")


def test_network_samples_in_eval_mode_and_its_mode_is_restored():
    net = build_network("unet", "digits", ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_heads=1,
                        norm_groups=4, dropout=0.5)
    assert net.training  # build_network gives a module ready to train
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    process = GaussianDiffusion.from_schedule("cosine", 20)
    a = generate(net, process, 4, (1, 8, 8), steps=5, seed=1)
    assert net.training  # generate ran it in eval mode (no dropout) and gave the mode back
    b = generate(net.eval(), process, 4, (1, 8, 8), steps=5, seed=1)
    assert torch.equal(a, b)
    assert not ddpmkit.Pipeline(net.train(), process).network.training


def test_save_pretrained_and_load_round_trip(tiny_run, tmp_path):
    pipe = ddpmkit.load(tiny_run)
    out = ddpmkit.save(pipe, tmp_path / "model")
    back = ddpmkit.load(out)
    assert back.step == pipe.step == 4 and back.config == pipe.config
    for k, v in pipe.network.state_dict().items():
        assert torch.equal(v, back.network.state_dict()[k]), k
    assert torch.equal(pipe(3, steps=4), back(3, steps=4))
    assert main(["sample", "--checkpoint", str(out), "-n", "2", "--out", str(tmp_path / "s.png"), "--no-progress"]) == 0
    with pytest.raises(UserError, match="not empty"):
        pipe.save_pretrained(out)
    # A pipeline built by hand (no run config) saves too, and diffusers' format is one keyword away.
    net = build_network("unet", "digits", ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_heads=1,
                        norm_groups=4)
    mine = ddpmkit.Pipeline(net, GaussianDiffusion.from_schedule("cosine", 20), sampler="dpm++", steps=5)
    again = ddpmkit.load(mine.save_pretrained(tmp_path / "mine"), sampler="dpm++", steps=5)
    assert again.config.diffusion.schedule == "cosine" and torch.equal(mine(2), again(2))
    assert torch.equal(mine(2), ddpmkit.load(mine.save_pretrained(tmp_path / "pipe", format="diffusers"),
                                             sampler="dpm++", steps=5)(2))
    odd = ddpmkit.Pipeline(net, GaussianDiffusion(np.full(20, 0.05)))
    with pytest.raises(UserError, match="format='diffusers'"):
        odd.save_pretrained(tmp_path / "odd")
    assert not (tmp_path / "odd").exists()


def test_checkpoint_message_is_not_written_onto_the_progress_bar_line(tmp_path):
    cmd = [sys.executable, "-m", "ddpmkit", "train", "--config", str(ROOT / "configs" / "digits.toml")]
    for s in tiny_overrides(tmp_path / "run", steps=3):
        cmd += ["--set", s]
    proc = subprocess.run(cmd, capture_output=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:]
    segments = re.split(r"[\r\n]", proc.stdout)  # what a terminal shows as separate (re)drawn lines
    assert "train: 100%" in proc.stdout
    assert any(seg.startswith("saved checkpoint ") for seg in segments), proc.stdout
    assert not any("saved checkpoint" in seg and "%|" in seg for seg in segments), proc.stdout
