"""DDIM (Song, Meng & Ermon 2021): any eta >= 0 on any increasing subsequence; and its inversion."""

from __future__ import annotations

import math

import torch

from ..diffusion.process import GaussianDiffusion
from .common import Callback, Predictor, abar_list, randn


def _check_eta(eta: float) -> float:
    eta = float(eta)
    if not eta >= 0.0 or not math.isfinite(eta):
        raise ValueError(f"eta must be a finite number >= 0 (0 = deterministic DDIM, 1 = DDPM-like noise), "
                         f"got {eta}")
    return eta


def ddim_loop(predict: Predictor, process: GaussianDiffusion, x: torch.Tensor, *,
              generator: torch.Generator | None, callback: Callback, eta: float = 0.0) -> torch.Tensor:
    """DDIM, eq. 12 of Song et al., on the kept time indices tau (the respaced ``process``):

        x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z,
        sigma  = eta sqrt((1 - abar_prev) / (1 - abar)) sqrt(1 - abar / abar_prev),

    with abar_prev = 1 after the first kept index (so the last step returns x0_hat).  eta = 0 is
    deterministic; eta = 1 on the full schedule is DDPM with the fixed small variance (same noise
    draws, so the same generator gives the same samples up to rounding).  Network evaluations:
    ``steps``.
    """
    eta = _check_eta(eta)
    n = process.num_timesteps
    abar = abar_list(process)
    for step in range(n):
        i = n - 1 - step
        pred = predict(x, i)
        callback(step, i, x, pred.x0)
        a, a_prev = abar[i], (abar[i - 1] if i > 0 else 1.0)
        sigma = eta * math.sqrt((1.0 - a_prev) / (1.0 - a) * (1.0 - a / a_prev))
        x = math.sqrt(a_prev) * pred.x0 + math.sqrt(max(1.0 - a_prev - sigma * sigma, 0.0)) * pred.eps
        if sigma > 0.0:
            x = x + sigma * randn(x.shape, generator, x.device, x.dtype)
    return x


def ddim_invert_loop(predict: Predictor, process: GaussianDiffusion, x: torch.Tensor, *,
                     generator: torch.Generator | None, callback: Callback,
                     fixed_point_iters: int = 0) -> torch.Tensor:
    """Run deterministic DDIM (eta = 0) forwards: x0 (the ``x`` given) -> x_T, so that ``ddim_sample``
    with the same ``steps``/``spacing`` decodes x_T back to (approximately) x0.

    Each step from level s to the next level t uses x0_hat, eps_hat predicted at the current point
    (s, x_s): x_t = sqrt(abar_t) x0_hat + sqrt(1 - abar_t) eps_hat; the very first step (from the
    data) uses the prediction at (t_0, x0).  That is the usual first-order inversion: decoding uses
    eps at the other end of each step, so the round trip has an O(step) error.  With
    ``fixed_point_iters`` = k > 0 each step is refined k times with eps evaluated at the new point
    (t, x_t), which makes the step the exact inverse of the decoding step at convergence.
    Network evaluations: steps * (1 + k).  ``callback`` gets (step, t, x_t, x0_pred) before each
    step, with t the network index of the level just reached (t_0 for the start).
    """
    if int(fixed_point_iters) < 0:
        raise ValueError(f"fixed_point_iters must be >= 0, got {fixed_point_iters}")
    n = process.num_timesteps
    abar = abar_list(process)
    for step in range(n):
        i = step  # go from level i - 1 (data for i = 0) to level i
        src = max(i - 1, 0)
        pred = predict(x, src)
        callback(step, src, x, pred.x0)
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
