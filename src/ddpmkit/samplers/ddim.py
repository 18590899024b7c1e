"""DDIM (Song, Meng & Ermon 2021): any eta >= 0 on any increasing subsequence; and its inversion."""

from __future__ import annotations

import math

import torch

from ..diffusion.process import GaussianDiffusion
from .common import (
    Callback,
    ModelFn,
    Predictor,
    abar_list,
    initial_x,
    randn,
    sampling_process,
    steps_iter,
)


def _check_eta(eta: float) -> float:
    eta = float(eta)
    if not eta >= 0.0 or not math.isfinite(eta):
        raise ValueError(f"eta must be a finite number >= 0 (0 = deterministic DDIM, 1 = DDPM-like noise), "
                         f"got {eta}")
    return eta


@torch.no_grad()
def ddim_sample(model_fn: ModelFn, process: GaussianDiffusion, x_T_or_shape, *, steps=None,
                spacing: str = "uniform", eta: float = 0.0, generator: torch.Generator | None = None,
                clip_x0=False, guidance: float | None = None, y=None, num_classes: int | None = None,
                callback: Callback | None = None, progress: bool = False, device=None,
                dtype=None) -> torch.Tensor:
    """DDIM, eq. 12 of Song et al., on the time indices tau = sampling_timesteps(steps, spacing):

        x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z,
        sigma  = eta sqrt((1 - abar_prev) / (1 - abar)) sqrt(1 - abar / abar_prev),

    with abar_prev = 1 after the first kept index (so the last step returns x0_hat).  eta = 0 is
    deterministic; eta = 1 on the full schedule is DDPM with the fixed small variance (same noise
    draws, so the same generator gives the same samples up to rounding).  Network evaluations:
    ``steps``.
    """
    eta = _check_eta(eta)
    proc = sampling_process(process, steps, spacing)
    x = initial_x(process, x_T_or_shape, generator, device, dtype)
    predict = Predictor(model_fn, proc, x.shape[0], x.device, y=y, guidance=guidance,
                        num_classes=num_classes, clip_x0=clip_x0)
    n = proc.num_timesteps
    abar = abar_list(proc)
    net_t = proc.timestep_map.tolist()
    for step in steps_iter(n, progress, "ddim"):
        i = n - 1 - step
        pred = predict(x, i)
        if callback is not None:
            callback(step, net_t[i], x, pred.x0)
        a, a_prev = abar[i], (abar[i - 1] if i > 0 else 1.0)
        sigma = eta * math.sqrt((1.0 - a_prev) / (1.0 - a) * (1.0 - a / a_prev))
        x = math.sqrt(a_prev) * pred.x0 + math.sqrt(max(1.0 - a_prev - sigma * sigma, 0.0)) * pred.eps
        if sigma > 0.0:
            x = x + sigma * randn(x.shape, generator, x.device, x.dtype)
    return x


@torch.no_grad()
def ddim_invert(model_fn: ModelFn, process: GaussianDiffusion, x0: torch.Tensor, *, steps=None,
                spacing: str = "uniform", fixed_point_iters: int = 0, guidance: float | None = None,
                y=None, num_classes: int | None = None, callback: Callback | None = None,
                progress: bool = False) -> torch.Tensor:
    """Run deterministic DDIM (eta = 0) forwards: x0 -> x_T, so that ``ddim_sample`` with the same
    ``steps``/``spacing`` decodes x_T back to (approximately) x0.

    Each step from level s to the next level t uses x0_hat, eps_hat predicted at the current point
    (s, x_s): x_t = sqrt(abar_t) x0_hat + sqrt(1 - abar_t) eps_hat; the very first step (from the
    data) uses the prediction at (t_0, x0).  That is the usual first-order inversion: decoding uses
    eps at the other end of each step, so the round trip has an O(step) error.  With
    ``fixed_point_iters`` = k > 0 each step is refined k times with eps evaluated at the new point
    (t, x_t), which makes the step the exact inverse of the decoding step at convergence.
    Network evaluations: steps * (1 + k).  ``callback`` gets (step, t, x_t, x0_pred) before each
    step, with t the network index of the level just reached (t_0 for the start).
    """
    proc = sampling_process(process, steps, spacing)
    if int(fixed_point_iters) < 0:
        raise ValueError(f"fixed_point_iters must be >= 0, got {fixed_point_iters}")
    x = x0
    predict = Predictor(model_fn, proc, x.shape[0], x.device, y=y, guidance=guidance,
                        num_classes=num_classes)
    n = proc.num_timesteps
    abar = abar_list(proc)
    net_t = proc.timestep_map.tolist()
    for step in steps_iter(n, progress, "ddim-invert"):
        i = step  # go from level i - 1 (data for i = 0) to level i
        src = max(i - 1, 0)
        pred = predict(x, src)
        if callback is not None:
            callback(step, net_t[src], x, pred.x0)
        a_prev = abar[i - 1] if i > 0 else 1.0
        a = abar[i]
        x0_hat = pred.x0 if i > 0 else x
        eps = pred.eps
        x_next = math.sqrt(a) * x0_hat + math.sqrt(1.0 - a) * eps
        for _ in range(int(fixed_point_iters)):
            eps = predict(x_next, i).eps
            x0_hat = (x - math.sqrt(1.0 - a_prev) * eps) / math.sqrt(a_prev)
            x_next = math.sqrt(a) * x0_hat + math.sqrt(1.0 - a) * eps
        x = x_next
    return x
