"""Training objectives and the variational bound, per example.

All bound terms are in **bits per dimension** (nats / ln 2, averaged over every non-batch
dimension), as in Ho et al. and Nichol & Dhariwal, so the full bound is
``prior_bpd + sum_t vb_t`` with ``vb_0`` the decoder's negative log-likelihood.

Losses return per-example tensors of shape (B,); the trainer weights, averages and logs them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .parameterization import LEARNED_VARIANCES, split_variance_output, training_target
from .process import GaussianDiffusion, model_output_to_prediction

LOG2 = math.log(2.0)
HYBRID_LAMBDA = 1e-3
LOSS_TYPES = ("simple", "vlb", "hybrid")


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor,
                                        bins: int = 256) -> torch.Tensor:
    """log P(x) in nats, elementwise, for data on [-1, 1] quantised to ``bins`` levels.

    Each level x owns [x - 1/(bins-1), x + 1/(bins-1)]; the lowest and highest bins are open to
    -inf and +inf (Ho et al., eq. 13).  Uses the exact normal CDF (``torch.special.ndtr`` and
    ``log_ndtr``) and evaluates interior bins in whichever tail is more accurate.
    """
    if x.shape != mean.shape:
        raise ValueError(f"x shape {tuple(x.shape)} must equal mean shape {tuple(mean.shape)}")
    half = 1.0 / (bins - 1)
    inv_std = torch.exp(-log_scale)
    centered = x - mean
    upper = (centered + half) * inv_std
    lower = (centered - half) * inv_std
    log_cdf_upper = torch.special.log_ndtr(upper)          # left edge bin: P(z < upper)
    log_sf_lower = torch.special.log_ndtr(-lower)          # right edge bin: P(z > lower)
    # interior: P(lower < z < upper), computed on the side of zero with more precision
    right = centered > 0
    delta = torch.where(right, torch.special.ndtr(-lower) - torch.special.ndtr(-upper),
                        torch.special.ndtr(upper) - torch.special.ndtr(lower))
    log_delta = torch.log(delta.clamp_min(1e-12))
    edge = 1.0 - half  # data values beyond this are the extreme levels (+-1)
    return torch.where(x < -edge, log_cdf_upper, torch.where(x > edge, log_sf_lower, log_delta))


# --- per-t terms ----------------------------------------------------------------------------

def vlb_term(process: GaussianDiffusion, model_output: torch.Tensor, x0: torch.Tensor,
             x_t: torch.Tensor, t: torch.Tensor, *, return_prediction: bool = False):
    """L_t in bits/dim for each example: KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) for t > 0, and the
    decoder's negative log-likelihood -log p(x0 | x_1) for t = 0 (papers' L_{t-1} and L_0)."""
    t = process.check_t(t, x_t)
    pred = model_output_to_prediction(process, model_output, x_t, t)
    true_mean, _, true_log_var = process.q_posterior(x0, x_t, t)
    kl = mean_flat(normal_kl(true_mean, true_log_var, pred.mean, pred.log_var)) / LOG2
    nll = -mean_flat(discretized_gaussian_log_likelihood(x0, pred.mean, 0.5 * pred.log_var)) / LOG2
    out = torch.where(t == 0, nll, kl)
    return (out, pred) if return_prediction else out


def prior_bpd(process: GaussianDiffusion, x0: torch.Tensor) -> torch.Tensor:
    """KL(q(x_T | x0) || N(0, I)) in bits/dim; no parameters, close to zero for a good schedule."""
    t = torch.full((x0.shape[0],), process.num_timesteps - 1, dtype=torch.long, device=x0.device)
    mean, _, log_var = process.q_mean_variance(x0, t)
    return mean_flat(normal_kl(mean, log_var, torch.zeros_like(mean), torch.zeros_like(log_var))) / LOG2


# --- training losses ------------------------------------------------------------------------

def simple_loss(process: GaussianDiffusion, model_output: torch.Tensor, x0: torch.Tensor,
                t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Unweighted per-example MSE between the prediction and its target (eps, x0, v or mu~).

    For eps this is L_simple (Ho et al., eq. 14); for 'mean' it is ||mu~(x_t, x0) - mu_theta||^2
    without the bound's 1 / (2 sigma_t^2) weight (Ho et al., Table 2).  Only the prediction channels
    enter: with a learned variance its channels get no gradient from this term.
    """
    t = process.check_t(t, x0)
    out, _ = split_variance_output(model_output, x0, process.variance)
    target = training_target(process.prediction, x0, noise,
                             process.extract(process.sqrt_alphas_cumprod, t, x0),
                             process.extract(process.sqrt_one_minus_alphas_cumprod, t, x0),
                             x_t=process.q_sample(x0, t, noise),
                             c1=process.extract(process.net_posterior_mean_coef1, t, x0),
                             c2=process.extract(process.net_posterior_mean_coef2, t, x0))
    return mean_flat((out - target) ** 2)


def check_loss(loss_type: str, variance: str) -> None:
    """ValueError for an unknown loss type or one that does not fit the variance."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss type {loss_type!r}; valid choices: {', '.join(LOSS_TYPES)}")
    if loss_type == "hybrid" and variance not in LEARNED_VARIANCES:
        raise ValueError("loss 'hybrid' trains the variance: it needs variance "
                         + " or ".join(repr(v) for v in LEARNED_VARIANCES))


def training_losses(process: GaussianDiffusion, model_fn: Callable[..., torch.Tensor], x0: torch.Tensor,
                    t: torch.Tensor, *, loss_type: str = "simple", noise: torch.Tensor | None = None,
                    generator: torch.Generator | None = None, model_kwargs: dict | None = None) -> dict:
    """Per-example training losses at sampled steps ``t``.

    * ``simple``: the unweighted MSE on the prediction target: L_simple (Ho et al., eq. 14) for
      eps, ||mu~ - mu_theta||^2 for 'mean' (see ``simple_loss``).
    * ``vlb``: T * L_t, an unbiased single-term estimate of the full bound L_vlb (bits/dim): the
      true bound L with the process's variance (a learned one gets the gradient too).
    * ``hybrid``: L_simple + lambda * T * L_t with lambda = 0.001 and the mean's gradient stopped in
      the bound term, so it trains only the variance (Nichol & Dhariwal, Sec. 3.1); it needs a
      learned variance ('learned_range' or 'learned').

    Returns a dict with 'loss' and its parts ('mse', 'vb' where computed), each of shape (B,).
    """
    check_loss(loss_type, process.variance)
    t = process.check_t(t, x0)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    x_t = process.q_sample(x0, t, noise)
    output = model_fn(x_t, process.network_t(t), **(model_kwargs or {}))
    terms: dict[str, torch.Tensor] = {}
    T = process.num_timesteps
    if loss_type == "vlb":
        terms["vb"] = vlb_term(process, output, x0, x_t, t) * T
        terms["loss"] = terms["vb"]
        return terms
    terms["mse"] = simple_loss(process, output, x0, t, noise)
    terms["loss"] = terms["mse"]
    if loss_type == "hybrid":
        c = x0.shape[1]
        frozen = torch.cat([output[:, :c].detach(), output[:, c:]], dim=1)
        terms["vb"] = vlb_term(process, frozen, x0, x_t, t) * (HYBRID_LAMBDA * T)
        terms["loss"] = terms["mse"] + terms["vb"]
    return terms


# --- the full bound -------------------------------------------------------------------------

@torch.no_grad()
def bpd_terms(process: GaussianDiffusion, model_fn: Callable[..., torch.Tensor], x0: torch.Tensor, *,
              generator: torch.Generator | None = None, model_kwargs: dict | None = None,
              progress: Callable | None = None) -> dict:
    """Evaluate every term of the variational bound for a batch of data.

    Returns per-example tensors: ``total_bpd`` (B,), ``prior_bpd`` (B,), ``vb`` (B, T) with
    ``vb[:, t]`` = L_t in bits/dim, ``x0_mse`` and ``eps_mse`` (B, T) (the distortions used for
    rate-distortion curves).  ``total_bpd = prior_bpd + vb.sum(1)``.
    """
    B, T = x0.shape[0], process.num_timesteps
    vb = torch.empty(B, T, dtype=torch.float64, device=x0.device)
    x0_mse = torch.empty_like(vb)
    eps_mse = torch.empty_like(vb)
    steps = range(T - 1, -1, -1)
    for t_int in (progress(steps) if progress else steps):
        t = torch.full((B,), t_int, dtype=torch.long, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = process.q_sample(x0, t, noise)
        output = model_fn(x_t, process.network_t(t), **(model_kwargs or {}))
        term, pred = vlb_term(process, output, x0, x_t, t, return_prediction=True)
        vb[:, t_int] = term.double()
        x0_mse[:, t_int] = mean_flat((pred.x0 - x0) ** 2).double()
        eps_mse[:, t_int] = mean_flat((pred.eps - noise) ** 2).double()
    prior = prior_bpd(process, x0).double()
    return {"total_bpd": prior + vb.sum(dim=1), "prior_bpd": prior, "vb": vb,
            "x0_mse": x0_mse, "eps_mse": eps_mse}
