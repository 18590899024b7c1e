"""Forward strips, reverse trajectories and the recorder that feeds them."""

import pytest
import torch
from PIL import Image

from ddpmkit.diffusion.process import GaussianDiffusion
from ddpmkit.viz import TrajectoryRecorder, forward_strip, save_forward_strip, save_trajectory
from ddpmkit.viz._mpl import DPI
from ddpmkit.viz.figures import DDPM_STRIP_STEPS, PANEL_IN


@pytest.fixture(scope="module")
def process():
    return GaussianDiffusion.from_schedule("linear", 1000)


def png_size(path):
    with Image.open(path) as img:
        img.load()
        return img.size


def test_forward_strip_uses_q_sample_at_the_ddpm_steps(process):
    x0 = torch.rand(1, 8, 8) * 2 - 1
    ts, frames = forward_strip(process, x0, generator=torch.Generator().manual_seed(0))
    assert ts == list(DDPM_STRIP_STEPS) and frames.shape == (7, 1, 8, 8)
    g = torch.Generator().manual_seed(0)
    expected = torch.cat([process.q_sample(x0[None], t, generator=g) for t in ts])
    assert torch.equal(frames, expected)
    assert (frames[0] - x0).abs().max() < 0.1  # t = 0: variance beta_1 = 1e-4
    ts2, frames2 = forward_strip(process, x0, steps=4, generator=torch.Generator().manual_seed(1))
    assert ts2 == [0, 333, 666, 999] and frames2.shape == (4, 1, 8, 8)
    small = GaussianDiffusion.from_schedule("linear", 100)
    assert forward_strip(small, x0)[0] == [0, 16, 33, 50, 66, 82, 99]
    with pytest.raises(ValueError, match="0..99"):
        forward_strip(small, x0, steps=[0, 100])


def test_forward_strip_stepwise_chain_matches_q_step(process):
    x0 = torch.rand(1, 4, 4) * 2 - 1
    ts, frames = forward_strip(process, x0, steps=[0, 2], generator=torch.Generator().manual_seed(5), stepwise=True)
    g = torch.Generator().manual_seed(5)
    x = x0[None]
    chain = []
    for t in range(3):
        x = process.q_step(x, t, generator=g)
        chain.append(x)
    assert torch.equal(frames[0], chain[0][0]) and torch.equal(frames[1], chain[2][0])


def test_save_forward_strip_writes_a_png_of_the_expected_size(tmp_path, process):
    x0 = torch.rand(3, 8, 8) * 2 - 1
    path = save_forward_strip(process, x0, tmp_path / "sub" / "forward.png", generator=torch.Generator())
    w, h = png_size(path)
    assert w == round((0.5 + PANEL_IN * 8) * DPI) and h == round((0.35 + 0.35 + PANEL_IN) * DPI)


def test_recorder_keeps_the_chosen_steps_for_int_and_tensor_t(tmp_path):
    rec = TrajectoryRecorder([999, 500, 0])
    for step, t in enumerate(range(999, -1, -1)):
        tt = t if step % 2 else torch.full((3,), t)
        x = torch.full((3, 1, 4, 4), t / 1000)
        rec(step, tt, x, -x)
    snaps = rec.snapshots
    assert [s[0] for s in snaps] == [999, 500, 0]
    assert torch.allclose(snaps[1][1], torch.full((3, 1, 4, 4), 0.5)) and torch.equal(snaps[1][2], -snaps[1][1])
    path = save_trajectory(rec.snapshots, tmp_path / "traj.png")
    w, h = png_size(path)
    assert w == round((0.5 + PANEL_IN * 3) * DPI) and h == round((0.35 + PANEL_IN * 6) * DPI)  # 3 samples x 2 rows
    with pytest.raises(ValueError, match="one time index"):
        rec(0, torch.tensor([3, 4]), torch.zeros(2, 1, 2, 2), torch.zeros(2, 1, 2, 2))


def test_recorder_nearest_step_on_a_respaced_grid():
    rec = TrajectoryRecorder([999, 750, 500, 250, 0], max_samples=2)
    grid = list(range(999, -1, -20)) + [0]  # 999, 979, ..., 19, 0
    for step, t in enumerate(grid):
        rec(step, t, torch.full((5, 1, 2, 2), float(t)), torch.zeros(5, 1, 2, 2))
    ts = [s[0] for s in rec.snapshots]
    assert ts == [999, 759, 499, 259, 0]
    assert rec.snapshots[0][1].shape == (2, 1, 2, 2)
    assert [float(s[1].max()) for s in rec.snapshots] == [999.0, 759.0, 499.0, 259.0, 0.0]  # the kept x_t


def test_save_trajectory_layout_and_errors(tmp_path):
    snaps = [(t, torch.rand(6, 3, 8, 8) * 2 - 1, torch.rand(6, 3, 8, 8) * 2 - 1) for t in (750, 500, 250, 0)]
    path = save_trajectory(snaps, tmp_path / "t.png", max_samples=2, title="seed 0")
    w, h = png_size(path)
    assert w == round((0.5 + PANEL_IN * 4) * DPI) and h == round((0.35 + 0.35 + PANEL_IN * 4) * DPI)
    with pytest.raises(ValueError, match="at least one"):
        save_trajectory([], tmp_path / "e.png")
