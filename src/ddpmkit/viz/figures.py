"""Labelled image figures: the forward-diffusion strip and reverse trajectories (x_t and predicted x0)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ._mpl import new_figure, save_figure, show_image
from .grid import images_to_uint8

DDPM_STRIP_STEPS = (0, 50, 100, 250, 500, 750, 999)
PANEL_IN = 1.2  # inches per image panel


def strip_steps(T: int, steps=None) -> list[int]:
    """Indices for a forward strip: DDPM_STRIP_STEPS when T = 1000, else 7 evenly spaced; a count n
    gives round(linspace(0, T-1, n)); explicit indices are checked against 0..T-1."""
    if steps is None:
        steps = list(DDPM_STRIP_STEPS) if T == 1000 else 7
    if isinstance(steps, (int, np.integer)) and not isinstance(steps, bool):
        if steps < 1:
            raise ValueError(f"the number of strip steps must be >= 1, got {steps}")
        return sorted({int(round(v)) for v in np.linspace(0, T - 1, int(steps))})
    out = [int(s) for s in steps]
    bad = [s for s in out if not 0 <= s < T]
    if not out or bad:
        raise ValueError(f"forward-strip steps must be time indices in 0..{T - 1}, got {bad or out}")
    return out


@torch.no_grad()
def forward_strip(process, image: torch.Tensor, steps=None, generator: torch.Generator | None = None,
                  stepwise: bool = False) -> tuple[list[int], torch.Tensor]:
    """Noisy versions x_t of one image (C, H, W) in [-1, 1] at the time indices ``steps``.

    By default each x_t is drawn independently from q(x_t | x0) with ``process.q_sample``; with
    ``stepwise`` one chain x0 -> x_1 -> ... is run with ``process.q_step`` (same marginals) and
    recorded at the steps.  Returns (steps, frames of shape (len(steps), C, H, W)).
    """
    if image.ndim != 3:
        raise ValueError(f"forward_strip expects one image (C, H, W), got shape {tuple(image.shape)}")
    ts = strip_steps(process.num_timesteps, steps)
    x0 = image[None].to(torch.float32)
    if not stepwise:
        frames = [process.q_sample(x0, t, generator=generator) for t in ts]
        return ts, torch.cat(frames)
    wanted, frames, x = set(ts), {}, x0
    for t in range(max(ts) + 1):
        x = process.q_step(x, t, generator=generator)
        if t in wanted:
            frames[t] = x
    return ts, torch.cat([frames[t] for t in ts])


def image_table(rows: Sequence[Sequence[np.ndarray]], path, col_titles: Sequence[str] = (),
                row_titles: Sequence[str] = (), title: str | None = None):
    """Draw a table of uint8 (H, W, C) images with column/row labels and save it."""
    nrows, ncols = len(rows), len(rows[0])
    top = 0.35 if title else 0.0
    fig, axes = new_figure(0.5 + PANEL_IN * ncols, 0.35 + top + PANEL_IN * nrows, nrows, ncols)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            show_image(axes[r, c], img, title=col_titles[c] if r == 0 and col_titles else None,
                       ylabel=row_titles[r] if c == 0 and row_titles else None)
    if title:
        fig.suptitle(title, fontsize=10)
    width, height = fig.get_size_inches()
    fig.subplots_adjust(left=0.45 / width, right=1 - 0.05 / width, bottom=0.05 / height,
                        top=1 - (0.3 + top) / height, wspace=0.08, hspace=0.08)
    return save_figure(fig, path)


def save_forward_strip(process, image: torch.Tensor, path, steps=None, generator: torch.Generator | None = None,
                       stepwise: bool = False, show_x0: bool = True):
    """PNG of the forward strip: x0, then x_t labelled 't = k' for each step (index convention of the process)."""
    ts, frames = forward_strip(process, image, steps, generator, stepwise)
    imgs = [im.transpose(1, 2, 0) for im in images_to_uint8(frames)]
    titles = [f"t = {t}" for t in ts]
    if show_x0:
        imgs.insert(0, images_to_uint8(image)[0].transpose(1, 2, 0))
        titles.insert(0, "x0 (data)")
    how = "q_step chain" if stepwise else "q(x_t | x0)"
    return image_table([imgs], path, col_titles=titles, title=f"forward diffusion, {how}, T = {process.num_timesteps}")


def save_trajectory(snapshots: Sequence[tuple], path, max_samples: int = 4, title: str | None = None):
    """Reverse-process figure: for each sample a row of x_t and a row of predicted x0, one column per t.

    ``snapshots`` is a list of ``(t, x_t, x0_pred)`` with x_t, x0_pred (N, C, H, W) in [-1, 1]
    (as :class:`TrajectoryRecorder` collects them), in the column order wanted.
    """
    if not snapshots:
        raise ValueError("save_trajectory needs at least one (t, x_t, x0_pred) snapshot")
    n = min(int(snapshots[0][1].shape[0]), max_samples)
    xs = [images_to_uint8(s[1][:n]) for s in snapshots]
    x0s = [images_to_uint8(s[2][:n]) for s in snapshots]
    if any(a.shape[0] != n or b.shape[0] != n for a, b in zip(xs, x0s, strict=True)):
        raise ValueError("every snapshot must hold the same number of samples in x_t and x0_pred")
    rows, labels = [], []
    for i in range(n):
        rows.append([x[i].transpose(1, 2, 0) for x in xs])
        rows.append([x[i].transpose(1, 2, 0) for x in x0s])
        labels += [f"#{i} $x_t$", r"$\hat{x}_0$"]
    return image_table(rows, path, col_titles=[f"t = {int(s[0])}" for s in snapshots], row_titles=labels,
                       title=title)


def _scalar_t(t) -> int:
    if isinstance(t, torch.Tensor):
        flat = t.reshape(-1)
        if flat.numel() == 0 or bool((flat != flat[0]).any()):
            raise ValueError(f"TrajectoryRecorder expects one time index per call, got {t.tolist()}")
        return int(flat[0])
    return int(t)


class TrajectoryRecorder:
    """A sampler ``callback(step, t, x_t, x0_pred)`` that keeps the snapshots nearest the chosen t.

    ``t`` may be an int or a tensor (B,) of identical values.  Samplers in ddpmkit pass the
    network's time index (already mapped for respaced processes).  For each requested step the snapshot with the
    nearest t is kept, so a 50-step DDIM run still fills the columns 999, 750, 500, 250, 0.
    Only the first ``max_samples`` of the batch are stored (CPU copies).
    """

    def __init__(self, steps: Sequence[int], max_samples: int = 8):
        self.steps = sorted({int(s) for s in steps}, reverse=True)
        if not self.steps:
            raise ValueError("TrajectoryRecorder needs at least one time index")
        self.max_samples = max_samples
        self._best: dict[int, tuple[int, int, torch.Tensor, torch.Tensor]] = {}

    def __call__(self, step: int, t, x_t: torch.Tensor, x0_pred: torch.Tensor) -> None:
        t = _scalar_t(t)
        closer = [s for s in self.steps if s not in self._best or abs(t - s) < self._best[s][0]]
        if not closer:
            return
        k = self.max_samples
        snap = (x_t[:k].detach().float().cpu().clone(), x0_pred[:k].detach().float().cpu().clone())
        for s in closer:
            self._best[s] = (abs(t - s), t, *snap)

    @property
    def snapshots(self) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
        """``(t, x_t, x0_pred)`` ordered from high to low t, one per distinct kept t."""
        seen, out = set(), []
        for s in self.steps:
            if s in self._best and self._best[s][1] not in seen:
                _, t, x, x0 = self._best[s]
                seen.add(t)
                out.append((t, x, x0))
        return sorted(out, key=lambda item: -item[0])
