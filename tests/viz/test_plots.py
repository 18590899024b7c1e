"""Plots write PNGs of a fixed size (figure inches x DPI)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ddpmkit.viz import plot_loss_curve, plot_points, plot_rate_distortion, plot_schedules
from ddpmkit.viz.plots import smooth


def png_size(path):
    with Image.open(path) as img:
        img.load()
        return img.size


def write_metrics(path, quarters=True, lr=True, garbage=False):
    with open(path, "w") as f:
        for s in range(1, 60):
            rec = {"step": s, "loss": 1.0 / s + 0.01}
            if quarters:
                rec.update({f"loss_q{q}": rec["loss"] * (q + 1) for q in range(4)})
            if lr:
                rec["lr"] = 1e-4 * min(1.0, s / 10)
            f.write(json.dumps(rec) + "\n")
            if s == 30:
                f.write(json.dumps({"step": s, "event": "checkpoint"}) + "\n\n")
        if garbage:
            f.write('{"step": 60, "lo')


def test_loss_curve_with_quarters_and_lr(tmp_path):
    write_metrics(tmp_path / "metrics.jsonl")
    assert png_size(plot_loss_curve(tmp_path / "metrics.jsonl", tmp_path / "out" / "loss.png")) == (1350, 360)


def test_loss_curve_plain_and_half_written_last_line(tmp_path):
    write_metrics(tmp_path / "m.jsonl", quarters=False, lr=False, garbage=True)
    with pytest.warns(UserWarning, match="skipped 1 unparsable"):
        path = plot_loss_curve(tmp_path / "m.jsonl", tmp_path / "loss.png")
    assert png_size(path) == (450, 360)
    (tmp_path / "empty.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(ValueError, match="no records"):
        plot_loss_curve(tmp_path / "empty.jsonl", tmp_path / "x.png")


def test_smooth_is_centred_and_keeps_length():
    v = np.arange(100, dtype=float)
    s = smooth(v, 5)
    assert s.shape == v.shape and np.allclose(s[2:-2], v[2:-2])  # a line is its own centred average


def test_schedules_points_and_rate_distortion(tmp_path):
    assert png_size(plot_schedules(tmp_path / "s.png", T=200)) == (900, 360)
    pts = torch.randn(300, 2)
    assert png_size(plot_points(pts, tmp_path / "p.png", reference=pts.numpy() * 2)) == (800, 400)
    assert png_size(plot_points(pts, tmp_path / "p1.png")) == (400, 400)
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        plot_points(torch.randn(5, 3), tmp_path / "bad.png")
    rate, dist = np.linspace(3, 0, 50), np.linspace(0, 60, 50)
    assert png_size(plot_rate_distortion(rate, dist, tmp_path / "rd.png")) == (420, 360)
    assert png_size(plot_rate_distortion(rate, dist, tmp_path / "rd3.png", t=np.arange(50))) == (1260, 360)
