"""Conversions between what a network predicts and the quantities of the process.

With ``alpha = sqrt(alpha_bar_t)`` and ``sigma = sqrt(1 - alpha_bar_t)`` the forward marginal is
``x_t = alpha * x0 + sigma * eps``.  The velocity of Salimans & Ho (2022) is
``v = alpha * eps - sigma * x0``.  The posterior mean of Ho et al. (2020, eq. 7) is
``mu = c1 * x0 + c2 * x_t`` with the posterior-mean coefficients c1, c2 of the step; c1 > 0 at every
step (c1 = 1, c2 = 0 at t = 0), so a predicted mean determines x0.  Everything here is a pure
function of tensors (no process, no schedule lookup): the process extracts alpha, sigma (and c1,
c2) at index t and calls these.  The one adapter that every loss and every sampler uses to turn a
network output into ``(x0, eps, mean, log_var)`` is
:func:`ddpmkit.diffusion.process.model_output_to_prediction`, built from the functions below.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

PREDICTIONS = ("eps", "x0", "v", "mean")
VARIANCES = ("fixed_small", "fixed_large", "learned_range", "learned")
LEARNED_VARIANCES = ("learned_range", "learned")  # the network outputs 2C channels


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


def mean_from_x0(x_t: torch.Tensor, x0: torch.Tensor, c1, c2) -> torch.Tensor:
    """Posterior mean mu~(x_t, x0) = c1 * x0 + c2 * x_t (c1, c2: the posterior-mean coefficients)."""
    return c1 * x0 + c2 * x_t


def x0_from_mean(x_t: torch.Tensor, mean: torch.Tensor, c1, c2) -> torch.Tensor:
    return (mean - c2 * x_t) / c1


def x0_eps_from_output(prediction: str, out: torch.Tensor, x_t: torch.Tensor, alpha, sigma, c1=None, c2=None):
    """(x0, eps) from a network's raw prediction of type ``prediction`` ('eps' | 'x0' | 'v' | 'mean');
    'mean' needs the posterior-mean coefficients c1, c2 of the step the network predicts."""
    check_choice("prediction type", prediction, PREDICTIONS)
    if prediction == "eps":
        return x0_from_eps(x_t, out, alpha, sigma), out
    if prediction == "x0":
        return out, eps_from_x0(x_t, out, alpha, sigma)
    if prediction == "mean":
        x0 = x0_from_mean(x_t, out, c1, c2)
        return x0, eps_from_x0(x_t, x0, alpha, sigma)
    return x0_from_v(x_t, out, alpha, sigma), eps_from_v(x_t, out, alpha, sigma)


def learned_log_variance(v: torch.Tensor, min_log, max_log) -> torch.Tensor:
    """Improved DDPM's interpolation (eq. 15): log var = frac log(beta) + (1 - frac) log(beta_tilde),
    frac = (v + 1) / 2 for the network's v in [-1, 1]."""
    return interpolate_log_variance((v + 1.0) / 2.0, min_log, max_log)


def interpolate_log_variance(frac: torch.Tensor, min_log, max_log) -> torch.Tensor:
    return frac * max_log + (1.0 - frac) * min_log


def relearned_log_variance(log_var: torch.Tensor, net_min_log, net_max_log, min_log, max_log) -> torch.Tensor:
    """A 'learned' log-variance of the network's own step [net_min_log, net_max_log] moved to the same
    position between the bounds [min_log, max_log] of a respaced step."""
    return interpolate_log_variance((log_var - net_min_log) / (net_max_log - net_min_log), min_log, max_log)


# --- what the model-output adapter returns -----------------------------------------------------

class Prediction(NamedTuple):
    """What the reverse step p(x_{t-1} | x_t) needs: predicted x0 and eps, mean and log-variance."""

    x0: torch.Tensor
    eps: torch.Tensor
    mean: torch.Tensor
    log_var: torch.Tensor


def split_variance_output(model_output: torch.Tensor, x_t: torch.Tensor, variance: str):
    """Split a learned-variance output (2C channels) into (prediction, variance channels): the
    interpolation v in [-1, 1] for 'learned_range', the log-variance itself for 'learned'."""
    c = x_t.shape[1]
    if variance in LEARNED_VARIANCES:
        if model_output.shape[1] != 2 * c:
            what = "variance interpolation" if variance == "learned_range" else "log-variance"
            raise ValueError(
                f"variance {variance!r} needs a model output with 2*{c} = {2 * c} channels "
                f"(prediction and {what}), got {model_output.shape[1]}"
            )
        return model_output[:, :c], model_output[:, c:]
    if model_output.shape != x_t.shape:
        raise ValueError(
            f"model output shape {tuple(model_output.shape)} must equal x_t's shape {tuple(x_t.shape)}"
            f" for variance {variance!r}"
        )
    return model_output, None


def training_target(prediction: str, x0: torch.Tensor, eps: torch.Tensor, alpha, sigma, *,
                    x_t: torch.Tensor | None = None, c1=None, c2=None) -> torch.Tensor:
    """The regression target of the unweighted MSE loss for each prediction type: eps, x0, v, or
    the posterior mean mu~(x_t, x0) = c1 x0 + c2 x_t of the network's step for 'mean'."""
    check_choice("prediction type", prediction, PREDICTIONS)
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "mean":
        return mean_from_x0(x_t, x0, c1, c2)
    return v_from_x0_eps(x0, eps, alpha, sigma)
