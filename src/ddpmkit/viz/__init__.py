"""Pictures: image grids (Pillow) and labelled figures and plots (matplotlib, Agg, imported lazily)."""

from .figures import TrajectoryRecorder, forward_strip, save_forward_strip, save_trajectory
from .grid import make_grid, save_grid
from .plots import plot_loss_curve, plot_points, plot_rate_distortion, plot_schedules, read_metrics

__all__ = [
    "TrajectoryRecorder", "forward_strip", "make_grid", "plot_loss_curve", "plot_points",
    "plot_rate_distortion", "plot_schedules", "read_metrics", "save_forward_strip", "save_grid",
    "save_trajectory",
]
