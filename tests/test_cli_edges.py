"""The CLI's rough edges, each pinned: progress bars end at 100 %, --trajectory-n is honoured (and a cap
is said), `plot loss --help` is its own, the FID cache is the user's, weights are 0644, the
rate-distortion plot of a cosine model is readable, the demo stops after SIGTERM."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddpmkit.cli import main
from ddpmkit.diffusion import GaussianDiffusion
from ddpmkit.evaluation.reference import cache_dir_for, user_cache_dir
from ddpmkit.samplers import SAMPLERS, sample
from ddpmkit.testing.tiny import TINY_UNET

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_progress_bar_ends_at_100_percent(name, capsys):
    process = GaussianDiffusion.from_schedule("cosine", 50)
    sample(name, lambda x, t: 0.1 * x, process, (2, 3), steps=7, progress=True)
    last = [seg for seg in re.split(r"[\r\n]", capsys.readouterr().err) if seg.strip()][-1]
    assert "100%" in last and "7/7" in last, last


def test_trajectory_n_is_honoured_and_a_cap_is_said(tiny_run, tmp_path, capsys):
    heights = {}
    for k in (2, 6):
        traj = tmp_path / f"t{k}.png"
        assert main(["sample", "--checkpoint", str(tiny_run), "-n", "6", "--steps", "3", "--trajectory", "19,0",
                     "--trajectory-n", str(k), "--trajectory-out", str(traj), "--out", str(tmp_path / "s.png"),
                     "--no-progress"]) == 0
        heights[k] = Image.open(traj).size[1]
    assert heights[6] > 2 * heights[2] * 0.9  # three times the rows of samples, give or take the title
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(tiny_run), "-n", "3", "--steps", "3", "--trajectory", "19,0",
                 "--out", str(tmp_path / "s.png"), "--no-progress"]) == 0
    assert "--trajectory-n 8: showing 3 (-n 3" in capsys.readouterr().out


def test_plot_loss_help_is_its_own(tiny_run, tmp_path, capsys):
    helps = {}
    for argv in (["plot", "--help"], ["plot", "loss", "--help"], ["plot", "schedules", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        helps[" ".join(argv)] = capsys.readouterr().out
    assert len(set(helps.values())) == 3
    assert "metrics.jsonl" in helps["plot loss --help"] and "--timesteps" not in helps["plot loss --help"]
    assert main(["plot", "loss", str(tiny_run), "--out", str(tmp_path / "loss.png")]) == 0
    assert main(["plot", "schedules", "--timesteps", "50", "--out", str(tmp_path / "s.png")]) == 0


def test_fid_reference_cache_is_in_the_user_cache_never_beside_the_data(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.delenv("DDPMKIT_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir_for(str(data)) == tmp_path / "xdg" / "ddpmkit" / "fid-stats" == user_cache_dir() / "fid-stats"
    monkeypatch.setenv("DDPMKIT_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir_for(str(data)) == tmp_path / "mine" / "fid-stats"
    assert cache_dir_for(str(data), tmp_path / "given") == tmp_path / "given"
    assert list(data.iterdir()) == []


def test_every_cache_has_one_root_and_prepared_data_can_move_alone(tmp_path, monkeypatch):
    from ddpmkit.data.prepared import default_cache_root
    from ddpmkit.networks.cpu_fast import profile_path

    for env in ("DDPMKIT_CACHE_DIR", "DDPMKIT_PREPARED_DIR"):
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root = tmp_path / "xdg" / "ddpmkit"
    assert (cache_dir_for(""), profile_path(), default_cache_root()) == (
        root / "fid-stats", root / "cpu_fast.json", root / "prepared")
    monkeypatch.setenv("DDPMKIT_CACHE_DIR", str(tmp_path / "mine"))
    mine = tmp_path / "mine"
    assert (cache_dir_for(""), profile_path(), default_cache_root()) == (
        mine / "fid-stats", mine / "cpu_fast.json", mine / "prepared")
    monkeypatch.setenv("DDPMKIT_PREPARED_DIR", str(tmp_path / "big-disk"))
    assert default_cache_root() == tmp_path / "big-disk" and profile_path() == mine / "cpu_fast.json"


def test_checkpoint_weights_are_world_readable(tiny_run):
    ckpt = next((tiny_run / "checkpoints").glob("step_*"))
    assert ckpt.stat().st_mode & 0o777 == 0o755
    for f in ckpt.iterdir():
        assert f.stat().st_mode & 0o777 == 0o644, f


def test_rate_distortion_plot_uses_a_log_axis_when_one_point_dwarfs_the_rest(tmp_path, monkeypatch):
    from ddpmkit.viz import plots

    figs = []
    real_save = plots.save_figure
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: (figs.append(fig), real_save(fig, path))[1])
    t = np.arange(100)
    cosine_like = np.concatenate([[4e5], np.linspace(40, 1, 99)])  # RMSE 4e5 at t = T-1, as cosine models give
    plots.plot_rate_distortion(np.linspace(0, 5, 100), cosine_like, tmp_path / "a.png", t=t)
    plots.plot_rate_distortion(np.linspace(0, 5, 100), np.linspace(40, 1, 100), tmp_path / "b.png", t=t)
    log_axes = [[ax.get_yscale() for ax in fig.axes] for fig in figs]
    assert log_axes == [["log", "linear", "log"], ["linear", "linear", "linear"]]


def test_demo_stops_after_sigterm_without_drawing(tmp_path):
    cfg = tmp_path / "tiny.toml"
    text = (ROOT / "configs" / "digits.toml").read_text()
    cfg.write_text(text.replace("timesteps = 1000", "timesteps = 20").replace("options = { ch = 24 }",
                                                                            f"options = {TINY_UNET}")
                   .replace("log_every = 50", "log_every = 2"))
    out = tmp_path / "demo"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ddpmkit", "demo", "--config", str(cfg), "--steps", "100000",
                             "--out", str(out), "--no-progress"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "run" / "metrics.jsonl").is_file() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-2000:]
    assert "received SIGTERM" in stdout and "run the demo again to resume" in stdout
    assert not (out / "samples.png").exists()  # no 1000-step pictures after "saving, then exiting"
    assert any((out / "run" / "checkpoints").glob("step_*"))
