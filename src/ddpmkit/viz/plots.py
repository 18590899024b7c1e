"""Line and scatter plots: loss curves, schedules, 2-D samples, rate-distortion (PNG via Agg)."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch

from ._mpl import new_figure, save_figure

QUARTER_KEYS = ("loss_q0", "loss_q1", "loss_q2", "loss_q3")


def read_metrics(path) -> list[dict]:
    """Records of a ``metrics.jsonl``; blank and unparsable lines (e.g. a half-written last line) are skipped."""
    records, bad = [], 0
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(rec, dict):
            records.append(rec)
    if bad:
        warnings.warn(f"skipped {bad} unparsable line(s) in {path}", stacklevel=2)
    return records


def smooth(values, window: int | None = None) -> np.ndarray:
    """Centred moving average (no lag); ``window`` defaults to about 2% of the points, at least 1.

    Near the ends the window shrinks to the points available, so the output has the input's length.
    """
    values = np.asarray(values, dtype=np.float64)
    window = window or max(1, len(values) // 50)
    if window <= 1 or len(values) < 3:
        return values.copy()
    kernel = np.ones(window)
    return np.convolve(values, kernel, mode="same") / np.convolve(np.ones_like(values), kernel, mode="same")


def _series(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r["step"], r[key]) for r in records
           if "step" in r and isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return (np.array([p[0] for p in pts], dtype=np.float64), np.array([p[1] for p in pts], dtype=np.float64))


def plot_loss_curve(metrics_jsonl_path, out_path, title: str | None = None) -> Path:
    """Loss vs step (log scale, raw and smoothed), per-quarter-of-t losses and the learning rate if logged."""
    records = read_metrics(metrics_jsonl_path)
    steps, loss = _series(records, "loss")
    if steps.size == 0:
        raise ValueError(f"{metrics_jsonl_path} has no records with 'step' and 'loss'")
    quarters = {k: _series(records, k) for k in QUARTER_KEYS}
    quarters = {k: v for k, v in quarters.items() if v[0].size}
    lr_steps, lr = _series(records, "lr")
    panels = 1 + bool(quarters) + bool(lr.size)
    fig, axes = new_figure(4.5 * panels, 3.6, 1, panels)
    ax = axes[0, 0]
    ax.plot(steps, loss, color="tab:blue", alpha=0.3, lw=0.8, label="loss")
    ax.plot(steps, smooth(loss), color="tab:blue", lw=1.6, label="smoothed")
    ax.set(xlabel="step", ylabel="loss", title=title or "training loss")
    if np.all(loss > 0):
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    col = 1
    if quarters:
        ax = axes[0, col]
        for i, (key, (s, v)) in enumerate(quarters.items()):
            ax.plot(s, smooth(v), lw=1.4, label=f"t in quarter {key[-1]}", color=f"C{i}")
        ax.set(xlabel="step", ylabel="loss (smoothed)", title="loss per quarter of t")
        if all(np.all(v > 0) for _, v in quarters.values()):
            ax.set_yscale("log")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        col += 1
    if lr.size:
        ax = axes[0, col]
        ax.plot(lr_steps, lr, color="tab:green")
        ax.set(xlabel="step", ylabel="learning rate", title="learning rate")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, out_path)


def plot_schedules(out_path, T: int = 1000, schedules: tuple[str, ...] = ("linear", "cosine")) -> Path:
    """alpha_bar_t and log-SNR = log(alpha_bar / (1 - alpha_bar)) against t / T (Improved DDPM, Fig. 5)."""
    from ..diffusion.schedules import get_betas

    fig, axes = new_figure(9.0, 3.6, 1, 2)
    u = (np.arange(T) + 1) / T
    for name in schedules:
        abar = np.cumprod(1.0 - get_betas(name, T))
        axes[0, 0].plot(u, abar, label=name)
        axes[0, 1].plot(u, np.log(abar) - np.log1p(-abar), label=name)
    axes[0, 0].set(xlabel="diffusion step (t / T)", ylabel=r"$\bar\alpha_t$", title=rf"$\bar\alpha_t$, T = {T}")
    axes[0, 1].set(xlabel="diffusion step (t / T)", ylabel=r"log SNR = log $\bar\alpha_t / (1-\bar\alpha_t)$",
                   title="log-SNR")
    for ax in axes[0]:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, out_path)


def _points(p) -> np.ndarray:
    arr = p.detach().cpu().numpy() if isinstance(p, torch.Tensor) else np.asarray(p)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"expected 2-D points of shape (N, 2), got {arr.shape}")
    return arr


def plot_points(points, out_path, reference=None, title: str | None = None, lim: float = 4.5) -> Path:
    """Scatter of 2-D samples in [-lim, lim]^2, beside the reference data when given."""
    samples = _points(points)
    panels = [("samples" if title is None else title, samples, "tab:blue")]
    if reference is not None:
        panels.insert(0, ("data", _points(reference), "tab:gray"))
    fig, axes = new_figure(4.0 * len(panels), 4.0, 1, len(panels))
    for ax, (name, pts, color) in zip(axes[0], panels, strict=True):
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5, color=color, linewidths=0)
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", title=f"{name} (n = {len(pts)})")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, out_path)


def distortion_needs_log_axis(distortion) -> bool:
    """A log distortion axis when the positive values span more than two decades (linear axes would
    show one point and a flat line)."""
    d = np.asarray(distortion, dtype=np.float64)
    d = d[np.isfinite(d) & (d > 0)]
    return d.size > 1 and d.max() / d.min() > 100.0


def plot_rate_distortion(rate, distortion, out_path, t=None) -> Path:
    """Distortion (RMSE on [0, 255]) against rate (bits/dim), as DDPM Fig. 5; with ``t`` also both against t."""
    rate, distortion = np.asarray(rate, dtype=np.float64), np.asarray(distortion, dtype=np.float64)
    if rate.shape != distortion.shape or rate.ndim != 1 or rate.size == 0:
        raise ValueError(f"rate and distortion must be 1-D of equal length, got {rate.shape} and {distortion.shape}")
    panels = 1 if t is None else 3
    fig, axes = new_figure(4.2 * panels, 3.6, 1, panels)
    if t is not None:
        t = np.asarray(t)
        axes[0, 0].plot(t, distortion)
        axes[0, 0].set(xlabel="reverse process step t", ylabel="distortion (RMSE, [0, 255])", title="distortion")
        axes[0, 1].plot(t, rate)
        axes[0, 1].set(xlabel="reverse process step t", ylabel="rate (bits/dim)", title="rate")
    ax = axes[0, panels - 1]
    ax.plot(rate, distortion, marker=".", ms=3)
    ax.set(xlabel="rate (bits/dim)", ylabel="distortion (RMSE, [0, 255])", title="rate-distortion")
    if distortion_needs_log_axis(distortion):  # e.g. a cosine model's RMSE of 4e5 at t = T-1 beside ~10 elsewhere
        for a in (axes[0, 0], ax) if t is not None else (ax,):
            a.set_yscale("log")
    for a in axes[0]:
        a.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, out_path)
