"""Training objectives and the variational bound, per example.

All bound terms are in **bits per dimension** (nats / ln 2, averaged over every non-batch
dimension), as in Ho et al. and Nichol & Dhariwal, so the full bound is
``prior_bpd + sum_t vb_t`` with ``vb_0`` the decoder's negative log-likelihood.

Losses return per-example tensors of shape (B,); the trainer weights, averages and logs them.
``LossWeighting`` reweights the simple loss per step by the signal-to-noise ratio (Min-SNR-gamma,
P2); ``loss_weight`` is its closed form.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .parameterization import LEARNED_VARIANCES, split_variance_output, training_target
from .process import GaussianDiffusion, model_output_to_prediction

LOG2 = math.log(2.0)
HYBRID_LAMBDA = 1e-3
LOSS_TYPES = ("simple", "vlb", "hybrid")
LOSS_WEIGHTINGS = ("none", "min_snr", "p2")
WEIGHTED_PREDICTIONS = ("eps", "x0", "v")   # the targets whose MSE is a fixed multiple of the x0 MSE


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


# --- SNR weighting of the simple loss --------------------------------------------------------

@dataclass(frozen=True)
class LossWeighting:
    """How the simple loss is weighted per step (``diffusion.loss_weighting`` and its parameters).

    * ``none``: unweighted (L_simple).
    * ``min_snr``: Min-SNR-gamma (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR
      Weighting Strategy"): weight min(SNR, gamma) on the x0 error.
    * ``p2``: perception-prioritized weighting (Choi et al. 2022): weight 1 / (k + SNR)^gamma on the
      eps error (gamma = 0 is L_simple).
    """

    kind: str = "none"
    min_snr_gamma: float = 5.0
    p2_gamma: float = 1.0
    p2_k: float = 1.0


def signal_to_noise(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) of x_t = sqrt(abar) x0 + sqrt(1 - abar) eps."""
    return alphas_cumprod / (1.0 - alphas_cumprod)


def loss_weight(snr: torch.Tensor, prediction: str, weighting: LossWeighting) -> torch.Tensor:
    """The weight on the per-example MSE of ``prediction``'s target at signal-to-noise ratio ``snr``.

    The errors of the three targets are fixed multiples of each other at one step: with
    x_t = a x0 + s eps (a^2 + s^2 = 1, SNR = a^2 / s^2), ||eps - eps_hat||^2 = SNR ||x0 - x0_hat||^2 and
    ||v - v_hat||^2 = (1 + SNR) ||x0 - x0_hat||^2.  A weighting is defined once, on one of them, and
    converted, so each gives the same objective for every target (up to what the network learns):

    * Min-SNR-gamma, w_x0 = min(SNR, gamma): min(SNR, gamma) / SNR for eps, min(SNR, gamma) for x0,
      min(SNR, gamma) / (SNR + 1) for v (Hang et al. 2023; their code and diffusers'
      training scripts use the same three).
    * P2, w_eps = 1 / (k + SNR)^gamma: that for eps, SNR / (k + SNR)^gamma for x0 and
      SNR / ((SNR + 1) (k + SNR)^gamma) for v (Choi et al. 2022, whose lambda_t weights L_simple).
    """
    if weighting.kind == "none":
        return torch.ones_like(snr)
    if prediction not in WEIGHTED_PREDICTIONS:
        raise ValueError(f"loss weighting {weighting.kind!r} needs prediction "
                         f"{' / '.join(map(repr, WEIGHTED_PREDICTIONS))}, got {prediction!r}")
    if weighting.kind == "min_snr":
        w_x0 = torch.clamp(snr, max=weighting.min_snr_gamma)
        return {"x0": w_x0, "eps": w_x0 / snr, "v": w_x0 / (snr + 1.0)}[prediction]
    if weighting.kind == "p2":
        w_eps = (weighting.p2_k + snr) ** -weighting.p2_gamma
        return {"eps": w_eps, "x0": w_eps * snr, "v": w_eps * snr / (snr + 1.0)}[prediction]
    raise ValueError(f"unknown loss weighting {weighting.kind!r}; valid: {', '.join(LOSS_WEIGHTINGS)}")


def check_loss_weighting(weighting: LossWeighting, loss_type: str, prediction: str) -> None:
    """ValueError when ``weighting`` does not fit the loss or the prediction target.

    The weighting applies to the MSE term: with ``vlb`` there is none (weighting the bound would make
    it no bound), so any weighting but 'none' is refused; with ``hybrid`` it weights the MSE part
    only (the bound part trains only the variance)."""
    if weighting.kind not in LOSS_WEIGHTINGS:
        raise ValueError(f"unknown loss weighting {weighting.kind!r}; valid: {', '.join(LOSS_WEIGHTINGS)}")
    if weighting.kind == "none":
        return
    if loss_type == "vlb":
        raise ValueError(f"loss weighting {weighting.kind!r} weights the simple (MSE) loss; loss 'vlb' has none "
                         "(use loss 'simple' or 'hybrid', or loss_weighting 'none')")
    if prediction not in WEIGHTED_PREDICTIONS:
        raise ValueError(f"loss weighting {weighting.kind!r} needs prediction "
                         f"{' / '.join(map(repr, WEIGHTED_PREDICTIONS))}, got {prediction!r}")


def check_loss(loss_type: str, variance: str) -> None:
    """ValueError for an unknown loss type or one that does not fit the variance."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss type {loss_type!r}; valid choices: {', '.join(LOSS_TYPES)}")
    if loss_type == "hybrid" and variance not in LEARNED_VARIANCES:
        raise ValueError("loss 'hybrid' trains the variance: it needs variance "
                         + " or ".join(repr(v) for v in LEARNED_VARIANCES))


def training_losses(process: GaussianDiffusion, model_fn: Callable[..., torch.Tensor], x0: torch.Tensor,
                    t: torch.Tensor, *, loss_type: str = "simple", noise: torch.Tensor | None = None,
                    generator: torch.Generator | None = None, model_kwargs: dict | None = None,
                    weighting: LossWeighting | None = None) -> dict:
    """Per-example training losses at sampled steps ``t``.

    * ``simple``: the unweighted MSE on the prediction target: L_simple (Ho et al., eq. 14) for
      eps, ||mu~ - mu_theta||^2 for 'mean' (see ``simple_loss``).
    * ``vlb``: T * L_t, an unbiased single-term estimate of the full bound L_vlb (bits/dim): the
      true bound L with the process's variance (a learned one gets the gradient too).
    * ``hybrid``: L_simple + lambda * T * L_t with lambda = 0.001 and the mean's gradient stopped in
      the bound term, so it trains only the variance (Nichol & Dhariwal, Sec. 3.1); it needs a
      learned variance ('learned_range' or 'learned').

    ``weighting`` (default none) multiplies the MSE by ``loss_weight`` at each example's SNR (see
    ``check_loss_weighting`` for which losses take one); 'mse' stays unweighted, 'loss' is weighted.

    Returns a dict with 'loss' and its parts ('mse', 'vb' where computed), each of shape (B,).
    """
    check_loss(loss_type, process.variance)
    weighted = weighting is not None and weighting.kind != "none"
    if weighted:
        check_loss_weighting(weighting, loss_type, process.prediction)
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
    if weighted:
        w = loss_weight(signal_to_noise(process.alphas_cumprod.to(t.device)[t]), process.prediction, weighting)
        terms["loss"] = terms["mse"] * w.to(terms["mse"].dtype)
    if loss_type == "hybrid":
        c = x0.shape[1]
        frozen = torch.cat([output[:, :c].detach(), output[:, c:]], dim=1)
        terms["vb"] = vlb_term(process, frozen, x0, x_t, t) * (HYBRID_LAMBDA * T)
        terms["loss"] = terms["loss"] + terms["vb"]
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
