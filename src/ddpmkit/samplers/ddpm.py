"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), also on a respaced process (Improved DDPM)."""

from __future__ import annotations

import torch

from ..diffusion.process import GaussianDiffusion
from .common import Callback, Predictor, randn


def ddpm_loop(predict: Predictor, process: GaussianDiffusion, x: torch.Tensor, *,
              generator: torch.Generator | None, callback: Callback) -> torch.Tensor:
    """x_{t-1} = mu_theta(x_t, t) + sigma_t z, z ~ N(0, I) for t > 0, and x_0 = mu_theta(x_1, 1).

    The mean and variance come from the adapter: the posterior mean at the predicted x0 (clipped to
    [-1, 1] when ``clip_x0``) and the process's variance (fixed small beta_tilde, fixed large beta,
    or the learned interpolation).  On a respaced process (``steps`` < T) the betas are recomputed
    from the kept alpha_bar, as in Improved DDPM.  Network evaluations: ``steps`` (T by default).
    """
    n = process.num_timesteps
    for step in range(n):
        i = n - 1 - step
        pred = predict(x, i)
        callback(step, i, x, pred.x0)
        x = pred.mean
        if i > 0:  # no noise at the last step
            x = x + torch.exp(0.5 * pred.log_var) * randn(x.shape, generator, x.device, x.dtype)
    return x
