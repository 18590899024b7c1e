"""Fast solvers of the probability-flow ODE: DPM-Solver++ (2M / 3M multistep) and Heun.

Both run on the discrete schedule: the time grid is a set of integer indices
(``sampling_timesteps``; 'logsnr' by default for DPM-Solver++, 'karras' for Heun), the network is
evaluated exactly there, and the solver coefficients use the exact alpha_t = sqrt(abar_t),
sigma_t = sqrt(1 - abar_t) of those indices.  The last step goes from the smallest kept index to
the data (sigma = 0), where both solvers reduce to returning the predicted x0 (the h -> infinity
limit of the first-order step), so ``steps`` grid points cost ``steps`` network evaluations for
DPM-Solver++ and ``2 * steps - 1`` for Heun.
"""

from __future__ import annotations

import math

import torch

from ..diffusion.process import GaussianDiffusion
from .common import Callback, Predictor, abar_list


def dpm_solver_loop(predict: Predictor, process: GaussianDiffusion, x: torch.Tensor, *,
                    generator: torch.Generator | None, callback: Callback, order: int = 2) -> torch.Tensor:
    """DPM-Solver++ (Lu et al. 2022, Algorithm 2 'multistep'), data prediction, in lambda = log(alpha/sigma).

    With D_i the predicted x0 at grid point i and h = lambda_next - lambda_i:

        1st order: x_next = (sigma_next / sigma_i) x_i - alpha_next expm1(-h) D_i
        2M:        D = D_i + (D_i - D_{i-1}) / (2 r),  r = h_{i-1} / h
        3M:        the third-order multistep update (as in DPM-Solver++'s reference code).

    The first steps use lower order (no history yet) and so do the final ones (order <= number of
    remaining steps: 'lower_order_final'), which the paper recommends for stability at few steps;
    the last step returns D at the smallest kept index.  ``order`` in {1, 2, 3}; 1 is DDIM.
    Network evaluations: ``steps``.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"DPM-Solver++ order must be 1, 2 or 3, got {order!r}")
    n = process.num_timesteps
    abar = abar_list(process)
    alpha = [math.sqrt(a) for a in abar]
    sigma = [math.sqrt(1.0 - a) for a in abar]
    lam = [0.5 * (math.log(a) - math.log1p(-a)) for a in abar]
    hist: list[tuple[torch.Tensor, float]] = []  # (D, lambda) of previous grid points, newest first
    for step in range(n):
        i = n - 1 - step
        D = predict(x, i).x0
        callback(step, i, x, D)
        if i == 0:
            x = D
            break
        j = i - 1
        h = lam[j] - lam[i]
        k = min(order, step + 1, n - step)
        phi = math.expm1(-h)  # e^{-h} - 1
        if k == 1:
            Dt = D
            x = (sigma[j] / sigma[i]) * x - (alpha[j] * phi) * Dt
        elif k == 2:
            D1, l1 = hist[0]
            r0 = (lam[i] - l1) / h
            x = (sigma[j] / sigma[i]) * x - (alpha[j] * phi) * (D + (D - D1) * (0.5 / r0))
        else:
            (D1, l1), (D2, l2) = hist[0], hist[1]
            r0, r1 = (lam[i] - l1) / h, (l1 - l2) / h
            d1_0, d1_1 = (D - D1) / r0, (D1 - D2) / r1
            d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))
            d2 = (d1_0 - d1_1) / (r0 + r1)
            x = ((sigma[j] / sigma[i]) * x - (alpha[j] * phi) * D
                 + (alpha[j] * (phi / h + 1.0)) * d1
                 - (alpha[j] * ((phi + h) / h**2 - 0.5)) * d2)
        hist = [(D, lam[i])] + hist[:1]
    return x


def heun_loop(predict: Predictor, process: GaussianDiffusion, x: torch.Tensor, *,
              generator: torch.Generator | None, callback: Callback) -> torch.Tensor:
    """Heun's 2nd-order method on the probability-flow ODE (Karras et al. 2022, Algorithm 1, no churn).

    In the variance-exploding variables x~ = x_t / alpha_t, s = sigma_t / alpha_t the ODE is
    dx~/ds = eps(x_t, t).  Each step between grid points takes an Euler step and corrects it with
    the slope at its end (two evaluations); the last step to s = 0 is a single Euler step, which
    returns the predicted x0.  Network evaluations: ``2 * steps - 1``.
    """
    n = process.num_timesteps
    abar = abar_list(process)
    alpha = [math.sqrt(a) for a in abar]
    s = [math.sqrt((1.0 - a) / a) for a in abar]
    xs = x / alpha[n - 1]
    for step in range(n):
        i = n - 1 - step
        pred = predict(alpha[i] * xs, i)
        callback(step, i, alpha[i] * xs, pred.x0)
        if i == 0:
            xs = pred.x0
            break
        j, ds = i - 1, s[i - 1] - s[i]
        x_euler = xs + ds * pred.eps
        eps_end = predict(alpha[j] * x_euler, j).eps
        xs = xs + ds * 0.5 * (pred.eps + eps_end)
    return xs
