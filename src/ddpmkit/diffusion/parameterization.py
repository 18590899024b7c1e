"""Conversions between what a network predicts and the quantities of the process.

With ``alpha = sqrt(alpha_bar_t)`` and ``sigma = sqrt(1 - alpha_bar_t)`` the forward marginal is
``x_t = alpha * x0 + sigma * eps``.  The velocity of Salimans & Ho (2022) is
``v = alpha * eps - sigma * x0``.  Everything here is a pure function of tensors (no process, no
schedule lookup): the process extracts alpha and sigma at index t and calls these.  The one adapter
that every loss and every sampler uses to turn a network output into ``(x0, eps, mean, log_var)`` is
:func:`ddpmkit.diffusion.process.model_output_to_prediction`, built from the functions below.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

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


def x0_eps_from_output(prediction: str, out: torch.Tensor, x_t: torch.Tensor, alpha, sigma):
    """(x0, eps) from a network's raw prediction of type ``prediction`` ('eps' | 'x0' | 'v')."""
    check_choice("prediction type", prediction, PREDICTIONS)
    if prediction == "eps":
        return x0_from_eps(x_t, out, alpha, sigma), out
    if prediction == "x0":
        return out, eps_from_x0(x_t, out, alpha, sigma)
    return x0_from_v(x_t, out, alpha, sigma), eps_from_v(x_t, out, alpha, sigma)


def learned_log_variance(v: torch.Tensor, min_log, max_log) -> torch.Tensor:
    """Improved DDPM's interpolation (eq. 15): log var = frac log(beta) + (1 - frac) log(beta_tilde),
    frac = (v + 1) / 2 for the network's v in [-1, 1]."""
    frac = (v + 1.0) / 2.0
    return frac * max_log + (1.0 - frac) * min_log


# --- what the model-output adapter returns -----------------------------------------------------

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


def training_target(prediction: str, x0: torch.Tensor, eps: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """The regression target of L_simple for each prediction type."""
    check_choice("prediction type", prediction, PREDICTIONS)
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    return v_from_x0_eps(x0, eps, alpha, sigma)
