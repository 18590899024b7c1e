"""Rate-distortion of progressive coding with the reverse process (Ho et al. 2020, Sec. 4.3,
Algorithms 3-4, Table 4, Fig. 5).

The sender transmits x_T with the prior (cost L_prior), then x_{T-1}, ..., each x_t with
p(x_t | x_{t+1}) (cost L_t).  With ddpmkit's time indices (index t = diffused t+1 steps; for s >= 1,
``vb[s]`` is the cost of sending x at index s-1 given x at index s), a receiver holding x at index t
has been sent

    rate(t) = L_prior + sum_{s > t} vb[s]        (bits/dim; rate(T-1) = L_prior)

and reconstructs x0 by the model's prediction from x_t, with

    distortion(t) = sqrt(mean squared error of x0_pred(x_t)) on the [0, 255] scale = 127.5 * RMSE on [-1, 1].

The remaining decoder term vb[0] turns rate(0) into the lossless code length (total bits/dim).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

PIXEL_SCALE = 127.5  # [-1, 1] -> [0, 255]


def rate_distortion_from_terms(vb_mean, prior_mean: float, x0_mse_mean) -> dict[str, np.ndarray]:
    """Per time index t (0..T-1): cumulative rate (bits/dim) and distortion (RMSE on [0, 255]).

    Args:
        vb_mean: (T,) mean bound term per t in bits/dim (``vb_mean[0]`` is the decoder NLL, unused here).
        prior_mean: mean prior term in bits/dim.
        x0_mse_mean: (T,) mean squared error of the x0 prediction from x_t, on the [-1, 1] scale.

    Returns ``{"t", "rate", "distortion"}`` arrays ordered by t ascending; ``rate`` is non-increasing
    in t whenever every KL term is non-negative.
    """
    vb = np.asarray(vb_mean, dtype=np.float64)
    mse = np.asarray(x0_mse_mean, dtype=np.float64)
    if vb.ndim != 1 or vb.shape != mse.shape or vb.size == 0:
        raise ValueError(f"vb_mean and x0_mse_mean must be 1-D of equal length, got {vb.shape} and {mse.shape}")
    T = vb.size
    # received after index t: terms s = t+1 .. T-1  ->  reverse cumulative sum shifted by one
    after = np.concatenate([np.cumsum(vb[::-1])[::-1][1:], [0.0]])
    rate = float(prior_mean) + after
    distortion = PIXEL_SCALE * np.sqrt(np.clip(mse, 0.0, None))
    return {"t": np.arange(T), "rate": rate, "distortion": distortion}


def write_rate_distortion(rd: dict, out_dir: str | Path, *, meta: dict | None = None) -> dict[str, Path]:
    """``rate_distortion.csv``, ``rate_distortion.json`` and ``rate_distortion.png`` in ``out_dir``."""
    from .. import viz

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "rate_distortion.csv", "json": out / "rate_distortion.json",
             "png": out / "rate_distortion.png"}
    with open(paths["csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t", "rate_bpd", "distortion_rmse"])
        for t, r, d in zip(rd["t"], rd["rate"], rd["distortion"], strict=True):
            w.writerow([int(t), f"{r:.6f}", f"{d:.6f}"])
    payload = {**(meta or {}), "t": rd["t"].tolist(), "rate_bpd": rd["rate"].tolist(),
               "distortion_rmse": rd["distortion"].tolist()}
    paths["json"].write_text(json.dumps(payload, indent=1) + "\n")
    # plot from high t (start of the reverse process) to t = 0, as DDPM Fig. 5
    viz.plot_rate_distortion(rd["rate"], rd["distortion"], paths["png"], t=rd["t"])
    return paths


def table_rows(rd: dict, points: int = 10) -> list[tuple[int, float, float]]:
    """A few (t, rate, distortion) rows from T-1 down to 0 for printing (as DDPM Table 4)."""
    T = len(rd["t"])
    idx = sorted({int(round(v)) for v in np.linspace(T - 1, 0, points)}, reverse=True)
    return [(int(rd["t"][i]), float(rd["rate"][i]), float(rd["distortion"][i])) for i in idx]


def progressive_steps(T: int, columns: int = 6) -> list[int]:
    """Time indices for the progressive-generation figure, from T-1 down to 0."""
    return sorted({int(round(v)) for v in np.linspace(T - 1, 0, columns)}, reverse=True)


__all__ = ["rate_distortion_from_terms", "write_rate_distortion", "table_rows", "progressive_steps", "PIXEL_SCALE"]
