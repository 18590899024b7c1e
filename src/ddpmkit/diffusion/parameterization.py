"""Conversions between what a network predicts and the quantities of the process.

With ``alpha = sqrt(alpha_bar_t)`` and ``sigma = sqrt(1 - alpha_bar_t)`` the forward marginal is
``x_t = alpha * x0 + sigma * eps``.  The velocity of Salimans & Ho (2022) is
``v = alpha * eps - sigma * x0``.  The pure functions below are exact inverses of each other;
``model_output_to_prediction`` is the one adapter that every loss and every sampler uses to turn a
network output into ``(x0, eps, mean, log_var)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import torch

if TYPE_CHECKING:  # pragma: no cover
    from .process import GaussianDiffusion

PREDICTIONS = ("eps", "x0", "v")
VARIANCES = ("fixed_small", "fixed_large", "learned_range")


def check_choice(kind: str, value: str, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise ValueError(f"unknown {kind} {value!r}; valid choices: {', '.join(valid)}")
    return value


# --- pure conversions (alpha = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar)) -----------------

def x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, alpha, sigma) -> torch.Tensor:
    return (x_t - sigma * eps) / alpha


def eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, alpha, sigma) -> torch.Tensor:
    return (x_t - alpha * x0) / sigma


def v_from_x0_eps(x0: torch.Tensor, eps: torch.Tensor, alpha, sigma) -> torch.Tensor:
    return alpha * eps - sigma * x0


def x0_from_v(x_t: torch.Tensor, v: torch.Tensor, alpha, sigma) -> torch.Tensor:
    return alpha * x_t - sigma * v


def eps_from_v(x_t: torch.Tensor, v: torch.Tensor, alpha, sigma) -> torch.Tensor:
    return sigma * x_t + alpha * v


# --- the model-output adapter -----------------------------------------------------------------

class Prediction(NamedTuple):
    """What the reverse step p(x_{t-1} | x_t) needs: predicted x0 and eps, mean and log-variance."""

    x0: torch.Tensor
    eps: torch.Tensor
    mean: torch.Tensor
    log_var: torch.Tensor


def split_variance_output(model_output: torch.Tensor, x_t: torch.Tensor, variance: str):
    """Split a learned-variance output (2C channels) into (prediction, v in [-1, 1])."""
    c = x_t.shape[1]
    if variance == "learned_range":
        if model_output.shape[1] != 2 * c:
            raise ValueError(
                f"variance 'learned_range' needs a model output with 2*{c} = {2 * c} channels "
                f"(prediction and variance interpolation), got {model_output.shape[1]}"
            )
        return model_output[:, :c], model_output[:, c:]
    if model_output.shape != x_t.shape:
        raise ValueError(
            f"model output shape {tuple(model_output.shape)} must equal x_t's shape {tuple(x_t.shape)}"
            f" for variance {variance!r}"
        )
    return model_output, None


def model_output_to_prediction(
    process: GaussianDiffusion,
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    *,
    clip_x0: bool | Callable[[torch.Tensor], torch.Tensor] = False,
    prediction: str | None = None,
    variance: str | None = None,
) -> Prediction:
    """Turn a network output into (x0, eps, mean, log_var) for the step at index ``t``.

    ``prediction`` ('eps' | 'x0' | 'v') and ``variance`` ('fixed_small' | 'fixed_large' |
    'learned_range') default to the process's own.  ``clip_x0`` clamps the predicted x0 to
    [-1, 1] (or applies a callable); eps is then recomputed from the clipped x0 so that the pair
    stays consistent (DDIM uses both).  The mean is the posterior mean q(x_{t-1} | x_t, x0_hat),
    which for an eps prediction equals Ho et al.'s 1/sqrt(alpha_t) (x_t - beta_t/sqrt(1-abar_t) eps).
    """
    prediction = check_choice("prediction type", prediction or process.prediction, PREDICTIONS)
    variance = check_choice("variance type", variance or process.variance, VARIANCES)
    t = process.check_t(t, x_t)
    out, v_raw = split_variance_output(model_output, x_t, variance)

    alpha = process.extract(process.sqrt_alphas_cumprod, t, x_t)
    sigma = process.extract(process.sqrt_one_minus_alphas_cumprod, t, x_t)
    if prediction == "eps":
        eps = out
        x0 = process.x0_from_eps(x_t, t, eps)
    elif prediction == "x0":
        x0 = out
        eps = eps_from_x0(x_t, x0, alpha, sigma)
    else:  # v
        x0 = x0_from_v(x_t, out, alpha, sigma)
        eps = eps_from_v(x_t, out, alpha, sigma)

    if clip_x0:
        x0 = clip_x0(x0) if callable(clip_x0) else x0.clamp(-1.0, 1.0)
        eps = eps_from_x0(x_t, x0, alpha, sigma)

    mean, _, _ = process.q_posterior(x0, x_t, t)

    if variance == "fixed_small":
        log_var = process.extract(process.posterior_log_variance_clipped, t, x_t).expand_as(x_t)
    elif variance == "fixed_large":
        log_var = process.extract(process.log_betas_large, t, x_t).expand_as(x_t)
    else:  # learned_range: v * log(beta) + (1 - v) * log(beta_tilde)   (Nichol & Dhariwal, eq. 15)
        frac = (v_raw + 1.0) / 2.0
        max_log = process.extract(process.log_betas, t, x_t)
        min_log = process.extract(process.posterior_log_variance_clipped, t, x_t)
        log_var = frac * max_log + (1.0 - frac) * min_log
    return Prediction(x0=x0, eps=eps, mean=mean, log_var=log_var)


def training_target(prediction: str, x0: torch.Tensor, eps: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """The regression target of L_simple for each prediction type."""
    check_choice("prediction type", prediction, PREDICTIONS)
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    return v_from_x0_eps(x0, eps, alpha, sigma)
