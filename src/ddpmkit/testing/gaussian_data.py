"""Gaussian data N(mu, sd^2) per dimension, 8-bit quantised on [-1, 1], with its exact denoiser.

Used to check the variational bound and everything built on it against closed forms:
E[x0 | x_t] and Var[x0 | x_t] are Gaussian conditioning, the optimal eps follows, and for
``learned_range`` the model also outputs the true reverse variance beta_tilde + coef1^2 Var[x0 | x_t]
(as its interpolation v in [-1, 1]).  ``quantised`` draws 8-bit data and the exact -log2 P(x0).
"""

from __future__ import annotations

import numpy as np
import torch

LEVELS = torch.arange(256, dtype=torch.float64) / 255 * 2 - 1


class QuantisedGaussian:
    def __init__(self, mu: float = 0.1, sd: float = 0.3):
        self.mu, self.sd = float(mu), float(sd)

    def posterior(self, process, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """E[x0 | x_t] and Var[x0 | x_t] for the continuous Gaussian."""
        ab = process.alphas_cumprod[t].view(-1, *([1] * (x_t.ndim - 1)))
        a, s2 = ab.sqrt(), 1 - ab
        v = a * a * self.sd**2 + s2
        return self.mu + a * self.sd**2 / v * (x_t - a * self.mu), self.sd**2 * s2 / v

    def model_fn(self, process):
        """The optimal network for ``process`` (eps prediction; variance channels for learned_range)."""
        def model(x_t, t, y=None):
            ab = process.alphas_cumprod[t].view(-1, *([1] * (x_t.ndim - 1)))
            ex0, var0 = self.posterior(process, x_t, t)
            eps = (x_t - ab.sqrt() * ex0) / (1 - ab).sqrt()
            if process.variance != "learned_range":
                return eps
            c1 = process.posterior_mean_coef1[t].view(-1, 1)
            opt = (process.posterior_variance[t].view(-1, 1) + c1**2 * var0).log()
            lo = process.posterior_log_variance_clipped[t].view(-1, 1)
            hi = process.log_betas[t].view(-1, 1)
            frac = ((opt - lo) / (hi - lo)).clamp(0, 1)
            return torch.cat([eps, (2 * frac - 1).expand_as(eps)], 1)
        return model

    def bin_probabilities(self) -> np.ndarray:
        """P(level k) of the quantised data (edge bins open to +-inf)."""
        from scipy.stats import norm

        edges = np.concatenate([[-np.inf], (LEVELS[:-1] + LEVELS[1:]).numpy() / 2, [np.inf]])
        return np.diff(norm.cdf(edges, self.mu, self.sd))

    def quantised(self, n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0 of shape (n, d) on the 256 levels, exact -log2 P(x0) per dimension for each example)."""
        p = self.bin_probabilities()
        idx = np.random.default_rng(seed).choice(256, size=(n, d), p=p / p.sum())
        return LEVELS[idx], torch.from_numpy(-np.log2(p[idx]).mean(1))
