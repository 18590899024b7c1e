"""Matplotlib without global state: a bare ``Figure`` drawn by the Agg canvas (no pyplot, no backend switch)."""

from __future__ import annotations

from pathlib import Path

DPI = 100


def new_figure(width_in: float, height_in: float, nrows: int = 1, ncols: int = 1, **subplot_kw):
    """(figure, axes 2-D array) rendered by Agg; matplotlib is imported only here."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **subplot_kw)
    return fig, axes


def save_figure(fig, path) -> Path:
    """Write a PNG of exactly figsize * DPI pixels; parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format=path.suffix.lstrip(".").lower() or "png")
    return path


def show_image(ax, img_hwc, title: str | None = None, ylabel: str | None = None, fontsize: int = 9):
    """uint8 (H, W, C) into ``ax`` with nearest-neighbour pixels and no ticks."""
    if img_hwc.shape[-1] == 1:
        ax.imshow(img_hwc[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(img_hwc, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=fontsize)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=fontsize)
