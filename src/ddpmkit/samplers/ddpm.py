"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), also on a respaced process (Improved DDPM)."""

from __future__ import annotations

import torch

from ..diffusion.process import GaussianDiffusion
from .common import Callback, ModelFn, Predictor, initial_x, randn, sampling_process, steps_iter


@torch.no_grad()
def ddpm_sample(model_fn: ModelFn, process: GaussianDiffusion, x_T_or_shape, *, steps=None,
                spacing: str = "uniform", generator: torch.Generator | None = None, clip_x0=False,
                guidance: float | None = None, y=None, num_classes: int | None = None,
                callback: Callback | None = None, progress: bool = False, device=None,
                dtype=None) -> torch.Tensor:
    """x_{t-1} = mu_theta(x_t, t) + sigma_t z, z ~ N(0, I) for t > 0, and x_0 = mu_theta(x_1, 1).

    The mean and variance come from the adapter: the posterior mean at the predicted x0 (clipped to
    [-1, 1] when ``clip_x0``) and the process's variance (fixed small beta_tilde, fixed large beta,
    or the learned interpolation).  ``steps`` < T samples the respaced process over
    ``sampling_timesteps(process, steps, spacing)`` (betas recomputed from the kept alpha_bar, as
    in Improved DDPM).  Network evaluations: ``steps`` (T by default).
    """
    proc = sampling_process(process, steps, spacing)
    x = initial_x(process, x_T_or_shape, generator, device, dtype)
    predict = Predictor(model_fn, proc, x.shape[0], x.device, y=y, guidance=guidance,
                        num_classes=num_classes, clip_x0=clip_x0)
    n = proc.num_timesteps
    net_t = proc.timestep_map.tolist()
    for step in steps_iter(n, progress, "ddpm"):
        i = n - 1 - step
        pred = predict(x, i)
        if callback is not None:
            callback(step, net_t[i], x, pred.x0)
        x = pred.mean
        if i > 0:  # no noise at the last step
            x = x + torch.exp(0.5 * pred.log_var) * randn(x.shape, generator, x.device, x.dtype)
    return x
