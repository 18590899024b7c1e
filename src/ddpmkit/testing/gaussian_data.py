"""Gaussian data N(mu, sd^2) per dimension, 8-bit quantised on [-1, 1], with its exact denoiser.

Used to check the variational bound and everything built on it against closed forms:
E[x0 | x_t] and Var[x0 | x_t] are Gaussian conditioning, the optimal eps follows, and for
a learned variance the model also outputs the true reverse variance beta_tilde + coef1^2 Var[x0 | x_t]
(as its interpolation v in [-1, 1] for ``learned_range``, as its log for ``learned``).  ``quantised``
draws 8-bit data and the exact -log2 P(x0).
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

    def model_fn(self, process, prediction: str | None = None):
        """The optimal network for ``process``, in its prediction type unless ``prediction`` is given
        (eps, x0, v, or the posterior mean c1 E[x0 | x_t] + c2 x_t for 'mean').  A learned variance
        gets the true reverse variance: as its interpolation for 'learned_range', as its log for
        'learned'."""
        pred = prediction or process.prediction

        def model(x_t, t, y=None):
            shape = (-1, *([1] * (x_t.ndim - 1)))
            ab = process.alphas_cumprod[t].view(shape)
            ex0, var0 = self.posterior(process, x_t, t)
            eps = (x_t - ab.sqrt() * ex0) / (1 - ab).sqrt()
            c1, c2 = process.posterior_mean_coef1[t].view(shape), process.posterior_mean_coef2[t].view(shape)
            outs = {"eps": eps, "x0": ex0, "v": ab.sqrt() * eps - (1 - ab).sqrt() * ex0,
                    "mean": c1 * ex0 + c2 * x_t}
            if pred not in outs:
                raise ValueError(f"unknown prediction type {pred!r}; valid: {', '.join(outs)}")
            out = outs[pred]
            if process.variance not in ("learned_range", "learned"):
                return out
            opt = (process.posterior_variance[t].view(shape) + c1**2 * var0).log()
            if process.variance == "learned":
                return torch.cat([out, opt.expand_as(out)], 1)
            lo = process.posterior_log_variance_clipped[t].view(shape)
            hi = process.log_betas[t].view(shape)
            frac = ((opt - lo) / (hi - lo)).clamp(0, 1)
            return torch.cat([out, (2 * frac - 1).expand_as(out)], 1)
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
