"""Gaussian mixtures with an exact (Bayes-optimal) denoiser, to test samplers without training.

For data x0 ~ sum_k w_k N(mu_k, Sigma_k) and the forward marginal x_t = a x0 + s eps
(a = sqrt(abar_t), s = sqrt(1 - abar_t)) everything is Gaussian:

    x_t | k            ~ N(a mu_k, a^2 Sigma_k + s^2 I)
    E[x0 | x_t, k]     = mu_k + a Sigma_k (a^2 Sigma_k + s^2 I)^-1 (x_t - a mu_k)
    p(k | x_t)         = softmax_k(log w_k + log N(x_t; a mu_k, a^2 Sigma_k + s^2 I))
    E[x0 | x_t]        = sum_k p(k | x_t) E[x0 | x_t, k]
    eps*(x_t, t)       = (x_t - a E[x0 | x_t]) / s

which is the minimiser of L_simple, i.e. the perfect network.  Each Sigma_k is eigendecomposed once
(Sigma_k = U_k diag(lam_k) U_k^T), so every quantity above is a diagonal operation in the eigenbasis
and costs O(d^2) per point (O(d) for a diagonal covariance).  All of it is computed in float64; the
responsibilities use logsumexp, so far-away points do not underflow.

``mixture.model_fn(process)`` returns a ``model_fn(x_t, t, y=None)`` in the process's prediction type
('eps', 'x0', 'v' or 'mean').  With ``conditional=True`` the component index is the class label: label k
gives the exact conditional denoiser of component k, and label K (the null label) or ``y=None``
gives the unconditional one, exactly like a classifier-free-guidance network.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["GaussianMixture", "circle_mixture", "gaussian_784", "mixture_moments", "sliced_wasserstein2"]


class GaussianMixture:
    """A mixture of K Gaussians in d dimensions (float64)."""

    def __init__(self, weights: Sequence[float] | torch.Tensor, means: torch.Tensor,
                 covs: torch.Tensor | None = None, *, variances: torch.Tensor | None = None):
        """``covs`` (K, d, d) full covariances, or ``variances`` (K, d) diagonal ones (cheaper)."""
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.weights = self.weights / self.weights.sum()
        self.means = torch.as_tensor(means, dtype=torch.float64)
        K, d = self.means.shape
        if self.weights.shape != (K,):
            raise ValueError(f"weights must have shape ({K},), got {tuple(self.weights.shape)}")
        if (covs is None) == (variances is None):
            raise ValueError("give exactly one of covs (K, d, d) or variances (K, d)")
        if covs is not None:
            covs = torch.as_tensor(covs, dtype=torch.float64)
            if covs.shape != (K, d, d):
                raise ValueError(f"covs must have shape ({K}, {d}, {d}), got {tuple(covs.shape)}")
            lam, U = torch.linalg.eigh(covs)
            if (lam <= 0).any():
                raise ValueError("covariances must be positive definite")
            self.eigvals, self.eigvecs = lam, U  # (K, d), (K, d, d)
            self.covs = covs
        else:
            lam = torch.as_tensor(variances, dtype=torch.float64)
            if lam.shape != (K, d) or (lam <= 0).any():
                raise ValueError(f"variances must be positive with shape ({K}, {d})")
            self.eigvals, self.eigvecs = lam, None
            self.covs = torch.diag_embed(lam) if d <= 64 else None
        self.num_components, self.dim = K, d

    # --- the data distribution ---------------------------------------------------------------
    def sample(self, n: int, *, generator: torch.Generator | None = None,
               return_labels: bool = False):
        """n exact samples (float64), optionally with their component labels."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        z = z * self.eigvals[k].sqrt()
        if self.eigvecs is not None:
            z = torch.einsum("nij,nj->ni", self.eigvecs[k], z)
        x = self.means[k] + z
        return (x, k) if return_labels else x

    def component(self, k: int) -> GaussianMixture:
        """Component k as a one-component mixture."""
        if self.eigvecs is not None:
            return GaussianMixture([1.0], self.means[k:k + 1], self.covs[k:k + 1])
        return GaussianMixture([1.0], self.means[k:k + 1], variances=self.eigvals[k:k + 1])

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x0) of the data distribution (= the a = 1, s = 0 case)."""
        return torch.logsumexp(self._log_joint(x.double(), 1.0, 0.0), dim=-1)

    def responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        """p(k | x0) for data points, shape (N, K)."""
        lj = self._log_joint(x.double(), 1.0, 0.0)
        return torch.softmax(lj, dim=-1)

    # --- the exact denoiser ------------------------------------------------------------------
    def _rotate(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, d) -> coordinates in each component's eigenbasis, (N, K, d) (full covariances)."""
        return torch.einsum("kji,nj->nki", self.eigvecs, x)

    def _unrotate(self, z: torch.Tensor) -> torch.Tensor:
        """(N, K, d) eigen-coordinates -> (N, K, d) ambient coordinates."""
        if self.eigvecs is None:
            return z
        return torch.einsum("kij,nkj->nki", self.eigvecs, z)

    def _log_joint(self, x: torch.Tensor, a: float, s: float, *, with_post: bool = False):
        """log w_k + log N(x; a mu_k, a^2 Sigma_k + s^2 I), and optionally E[x0 | x, k]."""
        if self.eigvecs is None:
            r = x[:, None, :] - a * self.means[None]
        else:
            r = self._rotate(x) - a * torch.einsum("kji,kj->ki", self.eigvecs, self.means)[None]
        var = a * a * self.eigvals + s * s  # (K, d)
        logp = -0.5 * ((r * r) / var).sum(-1) - 0.5 * torch.log(var).sum(-1) \
            - 0.5 * self.dim * math.log(2 * math.pi) + torch.log(self.weights)
        if not with_post:
            return logp
        post = self.means[None] + self._unrotate(r * (a * self.eigvals / var))
        return logp, post

    def posterior_mean(self, x_t: torch.Tensor, abar: float,
                       labels: torch.Tensor | None = None) -> torch.Tensor:
        """E[x0 | x_t] at one noise level abar (float64, shape (N, d)); labels pick components
        (label K or a negative label means 'all components')."""
        x = x_t.reshape(x_t.shape[0], -1).double()
        a, s = math.sqrt(abar), math.sqrt(1.0 - abar)
        logp, post = self._log_joint(x, a, s, with_post=True)
        if labels is not None:
            lab = labels.to(torch.long).cpu()
            fixed = (lab >= 0) & (lab < self.num_components)
            mask = torch.zeros_like(logp, dtype=torch.bool)
            mask[fixed] = True
            mask[fixed, lab[fixed]] = False
            logp = logp.masked_fill(mask, -math.inf)
        resp = torch.softmax(logp, dim=-1)
        return torch.einsum("nk,nkd->nd", resp, post)

    def model_fn(self, process, *, prediction: str | None = None, conditional: bool = False,
                 learned_variance_channels: bool = False):
        """An exact network for ``process`` (its own prediction type unless ``prediction`` is given).

        The returned ``model_fn(x_t, t, y=None)`` takes the *network* time index (the original one
        for a respaced process, as samplers pass ``process.network_t(t)``), so build it on the
        original, unrespaced process.  ``conditional=True`` exposes ``model_fn.num_classes = K``.
        ``learned_variance_channels=True`` appends zeros as variance channels (v = 0 in
        learned_range, i.e. log-variance halfway between log beta and log beta_tilde).
        """
        abar = process.alphas_cumprod.detach().cpu().double()
        coef1 = process.posterior_mean_coef1.detach().cpu().double()
        coef2 = process.posterior_mean_coef2.detach().cpu().double()
        pred = prediction or process.prediction
        if pred not in ("eps", "x0", "v", "mean"):
            raise ValueError(f"unknown prediction type {pred!r}; valid: eps, x0, v, mean")
        mix = self

        def fn(x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
            if y is not None and not conditional:
                raise ValueError("y was given but this exact model is unconditional")
            shape, dtype = x_t.shape, x_t.dtype
            x = x_t.reshape(shape[0], -1).detach().cpu().double()
            t = torch.as_tensor(t).reshape(-1).expand(shape[0]).cpu()
            labels = None if y is None else torch.as_tensor(y).reshape(-1).expand(shape[0]).cpu()
            times = torch.unique(t).tolist()
            if len(times) == 1:  # the usual case: one time for the whole batch
                ab = float(abar[times[0]])
                x0 = mix.posterior_mean(x, ab, labels)
                a, s = math.sqrt(ab), math.sqrt(1.0 - ab)
                c1, c2 = float(coef1[times[0]]), float(coef2[times[0]])
            else:
                x0 = torch.empty_like(x)
                a_all = torch.empty(shape[0], 1, dtype=torch.float64)
                c1, c2 = coef1[t].unsqueeze(1), coef2[t].unsqueeze(1)
                for tv in times:
                    idx = (t == tv).nonzero().squeeze(1)
                    x0[idx] = mix.posterior_mean(x[idx], float(abar[tv]), None if labels is None else labels[idx])
                    a_all[idx] = float(abar[tv])
                a, s = a_all.sqrt(), (1.0 - a_all).sqrt()
            eps = (x - a * x0) / s
            out = {"eps": eps, "x0": x0, "v": a * eps - s * x0, "mean": c1 * x0 + c2 * x}[pred]
            out = out.reshape(shape).to(device=x_t.device, dtype=dtype)
            if learned_variance_channels:
                out = torch.cat([out, torch.zeros_like(out)], dim=1)
            return out

        fn.num_classes = self.num_components if conditional else None
        return fn


def circle_mixture(n_modes: int = 8, radius: float = 0.7, radial_std: float = 0.05,
                   tangential_std: float = 0.12, weights: Sequence[float] | None = None) -> GaussianMixture:
    """2-D mixture: n_modes Gaussians on a circle, elongated along the circle, with unequal weights
    proportional to 1, 2, 3, 4, 1, 2, 3, 4 unless given.  Defaults keep the data inside [-1, 1]."""
    ang = torch.arange(n_modes, dtype=torch.float64) * (2 * math.pi / n_modes)
    means = radius * torch.stack([ang.cos(), ang.sin()], dim=1)
    radial = torch.stack([ang.cos(), ang.sin()], dim=1)
    tang = torch.stack([-ang.sin(), ang.cos()], dim=1)
    covs = radial_std**2 * radial[:, :, None] * radial[:, None, :] \
        + tangential_std**2 * tang[:, :, None] * tang[:, None, :]
    if weights is None:
        weights = (torch.arange(n_modes, dtype=torch.float64) % 4) + 1
    return GaussianMixture(weights, means, covs)


def gaussian_784(full_covariance: bool = False, dim: int = 784, seed: int = 0) -> GaussianMixture:
    """A single Gaussian in d = 784 dimensions (a 28 x 28 'image'): mean in [-0.5, 0.5], variances
    log-uniform in [1e-3, 0.25]; with ``full_covariance`` a random rotation of those variances."""
    g = torch.Generator().manual_seed(seed)
    mean = (torch.rand(1, dim, generator=g, dtype=torch.float64) - 0.5)
    log_var = torch.empty(1, dim, dtype=torch.float64).uniform_(math.log(1e-3), math.log(0.25), generator=g)
    var = torch.exp(log_var)
    if not full_covariance:
        return GaussianMixture([1.0], mean, variances=var)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    cov = (q * var) @ q.T
    cov = 0.5 * (cov + cov.T)
    return GaussianMixture([1.0], mean, cov[None])


def mixture_moments(mixture: GaussianMixture, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Soft-assigned moments of samples x under the true responsibilities p(k | x): weights (K,),
    means (K, d) and covariances (K, d, d).  Compare a sampler's moments with those of exact samples
    (the same estimator), not with the true parameters, so the estimator's own bias cancels."""
    x = x.reshape(x.shape[0], -1).double()
    r = mixture.responsibilities(x)  # (N, K)
    n_k = r.sum(0)
    means = (r.T @ x) / n_k[:, None]
    diff = x[:, None, :] - means[None]
    covs = torch.einsum("nk,nki,nkj->kij", r, diff, diff) / n_k[:, None, None]
    return {"weights": n_k / x.shape[0], "means": means, "covs": covs}


def sliced_wasserstein2(x: torch.Tensor, ref: torch.Tensor, *, n_projections: int = 256,
                        generator: torch.Generator | None = None) -> float:
    """Sliced Wasserstein-2 distance between samples x (N, d) and a (larger) reference sample: the
    root mean, over random unit directions, of the squared W2 between the projected samples, with
    the reference's quantiles taken at the midpoints (i + 0.5) / N of x's order statistics."""
    x = x.reshape(x.shape[0], -1).double()
    ref = ref.reshape(ref.shape[0], -1).double()
    dirs = torch.randn(x.shape[1], n_projections, generator=generator, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    px = torch.sort(x @ dirs, dim=0).values
    pr = torch.sort(ref @ dirs, dim=0).values
    q = (torch.arange(x.shape[0], dtype=torch.float64) + 0.5) / x.shape[0]
    pos = q * ref.shape[0] - 0.5  # fractional index into the sorted reference
    lo = pos.floor().clamp(0, ref.shape[0] - 1).long()
    hi = (lo + 1).clamp(max=ref.shape[0] - 1)
    frac = (pos - lo.double()).clamp(0, 1)[:, None]
    qr = pr[lo] * (1 - frac) + pr[hi] * frac
    return float(((px - qr) ** 2).mean().sqrt())
