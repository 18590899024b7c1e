"""The Gaussian diffusion process of Ho et al. (2020) with precomputed float64 coefficients.

Time convention (used everywhere in ddpmkit): ``t`` is an integer index in ``0 .. T-1`` and index
``t`` means "diffused ``t + 1`` steps".  The papers write ``1 .. T``; their ``beta_1`` is our
``betas[0]``, so ``q_sample(x0, t=0)`` has variance ``beta_1`` and ``q_sample(x0, t=T-1)`` is the
last latent x_T.  The process never holds a network and never loops over time: samplers do that.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from . import parameterization as P
from .schedules import get_betas

# coefficients of the network's own step, kept per step of a respaced process (see ``respace``)
NETWORK_COEFS = ("posterior_mean_coef1", "posterior_mean_coef2", "log_betas", "posterior_log_variance_clipped")


def _as_generator_noise(like: torch.Tensor, noise: torch.Tensor | None,
                        generator: torch.Generator | None) -> torch.Tensor:
    if noise is None:
        return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)
    if noise.shape != like.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} must equal the data's shape {tuple(like.shape)}")
    return noise


class GaussianDiffusion(nn.Module):
    """Schedule buffers and the closed-form pieces of the forward and reverse processes.

    Args:
        betas: 1-D float64 array of T betas (see :mod:`ddpmkit.diffusion.schedules`).
        prediction: what the network predicts: 'eps', 'x0', 'v' or 'mean' (the posterior mean
            mu~ of its step, Ho et al.'s first parameterisation).
        variance: reverse-process variance: 'fixed_small' (beta_tilde), 'fixed_large' (beta, with
            beta_tilde_1 at t = 0 as the papers' code does), 'learned_range' (Improved DDPM) or
            'learned' (the network outputs the log-variance, Ho et al.'s learned diagonal Sigma).
        timestep_map: for a respaced process, the original index of each kept step (the network
            was trained on those); identity otherwise.
        network_coefs: for a respaced process, the original chain's coefficients named in
            ``NETWORK_COEFS`` at each kept step (``respace`` passes them); by default this process's
            own.  They are kept as ``net_<name>`` buffers and read a 'mean' prediction (mu of the
            network's step) and a 'learned' log-variance.
    """

    def __init__(self, betas: Sequence[float] | np.ndarray, prediction: str = "eps",
                 variance: str = "fixed_small", timestep_map: Sequence[int] | None = None,
                 network_coefs: Mapping[str, np.ndarray] | None = None):
        super().__init__()
        self.prediction = P.check_choice("prediction type", prediction, P.PREDICTIONS)
        self.variance = P.check_choice("variance type", variance, P.VARIANCES)
        betas = get_betas(np.asarray(betas, dtype=np.float64))
        T = betas.size
        self.num_timesteps = T

        alphas = 1.0 - betas
        abar = np.cumprod(alphas)
        abar_prev = np.append(1.0, abar[:-1])
        post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
        # beta_tilde at t = 0 is 0; like the papers' code, use beta_tilde at t = 1 there for the log.
        # With T = 1 there is no t = 1: fall back to beta_1 itself.
        first = post_var[1] if T > 1 else betas[0]
        post_log_var_clipped = np.log(np.append(first, post_var[1:]))
        large = np.append(first, betas[1:])

        coeffs = {
            "betas": betas,
            "alphas": alphas,
            "alphas_cumprod": abar,
            "alphas_cumprod_prev": abar_prev,
            "sqrt_alphas_cumprod": np.sqrt(abar),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - abar),
            "log_one_minus_alphas_cumprod": np.log(1.0 - abar),
            "sqrt_alphas": np.sqrt(alphas),
            "sqrt_betas": np.sqrt(betas),
            "log_betas": np.log(betas),
            "log_betas_large": np.log(large),
            "posterior_variance": post_var,
            "posterior_log_variance_clipped": post_log_var_clipped,
            "posterior_mean_coef1": betas * np.sqrt(abar_prev) / (1.0 - abar),
            "posterior_mean_coef2": (1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar),
        }
        for name, value in coeffs.items():
            self.register_buffer(name, torch.from_numpy(np.ascontiguousarray(value, dtype=np.float64)),
                                 persistent=False)
        tmap = np.arange(T) if timestep_map is None else np.asarray(timestep_map, dtype=np.int64)
        if tmap.shape != (T,):
            raise ValueError(f"timestep_map must have one entry per step ({T}), got shape {tmap.shape}")
        self.register_buffer("timestep_map", torch.from_numpy(tmap.astype(np.int64)), persistent=False)
        self.is_respaced = not np.array_equal(tmap, np.arange(T))  # the network's steps differ from ours
        net = {name: coeffs[name] for name in NETWORK_COEFS} if network_coefs is None else network_coefs
        if set(net) != set(NETWORK_COEFS) or any(np.shape(net[k]) != (T,) for k in NETWORK_COEFS):
            raise ValueError(f"network_coefs must hold {', '.join(NETWORK_COEFS)}, one value per step ({T})")
        for name in NETWORK_COEFS:
            self.register_buffer("net_" + name, torch.from_numpy(np.ascontiguousarray(net[name], dtype=np.float64)),
                                 persistent=False)

    # --- construction ----------------------------------------------------------------------
    @classmethod
    def from_schedule(cls, schedule: str | Sequence[float], T: int | None = None, **kwargs) -> GaussianDiffusion:
        """``GaussianDiffusion.from_schedule('cosine', 4000, variance='learned_range')``."""
        return cls(get_betas(schedule, T), **kwargs)

    def extra_repr(self) -> str:
        return f"T={self.num_timesteps}, prediction={self.prediction!r}, variance={self.variance!r}"

    # --- helpers ---------------------------------------------------------------------------
    def check_t(self, t: torch.Tensor | int, x: torch.Tensor) -> torch.Tensor:
        """Return ``t`` as a long tensor of shape (B,) on x's device; errors name the allowed range."""
        B = x.shape[0]
        if isinstance(t, (int, np.integer)) and not isinstance(t, bool):
            t = torch.full((B,), int(t), dtype=torch.long, device=x.device)
        elif not isinstance(t, torch.Tensor):
            raise TypeError(f"t must be an int or an integer tensor, got {type(t).__name__}")
        if t.is_floating_point() or t.dtype == torch.bool:
            raise TypeError(f"t must hold integer step indices 0..{self.num_timesteps - 1}, got dtype {t.dtype}")
        if t.ndim == 0:
            t = t.expand(B)
        if t.shape != (B,):
            raise ValueError(f"t must have shape ({B},) to match the batch, got {tuple(t.shape)}")
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= self.num_timesteps:
            raise ValueError(
                f"time index out of range: got values in [{lo}, {hi}], allowed 0..{self.num_timesteps - 1}"
                " (index t means diffused t+1 steps)"
            )
        return t.to(device=x.device, dtype=torch.long)

    @staticmethod
    def extract(a: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """a[t] reshaped to broadcast against x (shape (B, 1, ..., 1)) and cast to x's dtype."""
        out = a.to(x.device)[t]
        return out.reshape(t.shape[0], *([1] * (x.ndim - 1))).to(x.dtype)

    def network_t(self, t: torch.Tensor) -> torch.Tensor:
        """The time index the network was trained with (differs from t only after respacing)."""
        return self.timestep_map.to(t.device)[t]

    # --- forward process -------------------------------------------------------------------
    def q_mean_variance(self, x0: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and log-variance of q(x_t | x0) = N(sqrt(abar_t) x0, (1 - abar_t) I)."""
        t = self.check_t(t, x0)
        mean = self.extract(self.sqrt_alphas_cumprod, t, x0) * x0
        var = self.extract(1.0 - self.alphas_cumprod, t, x0).expand_as(x0)
        log_var = self.extract(self.log_one_minus_alphas_cumprod, t, x0).expand_as(x0)
        return mean, var, log_var

    def _scaled_plus_noise(self, scale: torch.Tensor, std: torch.Tensor, x: torch.Tensor, t,
                           noise: torch.Tensor | None, generator: torch.Generator | None) -> torch.Tensor:
        """scale[t] x + std[t] noise, with the noise drawn from ``generator`` when not given."""
        t = self.check_t(t, x)
        noise = _as_generator_noise(x, noise, generator)
        return self.extract(scale, t, x) * x + self.extract(std, t, x) * noise

    def q_sample(self, x0: torch.Tensor, t, noise: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample q(x_t | x0) in closed form: sqrt(abar_t) x0 + sqrt(1 - abar_t) eps."""
        return self._scaled_plus_noise(self.sqrt_alphas_cumprod, self.sqrt_one_minus_alphas_cumprod, x0, t,
                                       noise, generator)

    def q_step(self, x_prev: torch.Tensor, t, noise: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """One forward step q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I); x_prev is x_{t-1}."""
        return self._scaled_plus_noise(self.sqrt_alphas, self.sqrt_betas, x_prev, t, noise, generator)

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x0) (Ho et al., eq. 6-7)."""
        if x0.shape != x_t.shape:
            raise ValueError(f"x0 shape {tuple(x0.shape)} must equal x_t shape {tuple(x_t.shape)}")
        t = self.check_t(t, x_t)
        mean = (self.extract(self.posterior_mean_coef1, t, x_t) * x0
                + self.extract(self.posterior_mean_coef2, t, x_t) * x_t)
        var = self.extract(self.posterior_variance, t, x_t).expand_as(x_t)
        log_var = self.extract(self.posterior_log_variance_clipped, t, x_t).expand_as(x_t)
        return mean, var, log_var

    # --- reverse process ---------------------------------------------------------------------
    def p_mean_variance(self, model_output: torch.Tensor, x_t: torch.Tensor, t, *,
                        clip_x0=False) -> P.Prediction:
        """The one model-output adapter: (x0, eps, mean, log_var) of p(x_{t-1} | x_t)."""
        return model_output_to_prediction(self, model_output, x_t, t, clip_x0=clip_x0)


# --- the model-output adapter -------------------------------------------------------------------

def model_output_to_prediction(
    process: GaussianDiffusion,
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    *,
    clip_x0: bool | Callable[[torch.Tensor], torch.Tensor] = False,
    prediction: str | None = None,
    variance: str | None = None,
) -> P.Prediction:
    """Turn a network output into (x0, eps, mean, log_var) for the step at index ``t``.

    ``prediction`` ('eps' | 'x0' | 'v' | 'mean') and ``variance`` ('fixed_small' | 'fixed_large' |
    'learned_range' | 'learned') default to the process's own.  ``clip_x0`` clamps the predicted x0
    to [-1, 1] (or applies a callable); eps is then recomputed from the clipped x0 so that the pair
    stays consistent (DDIM uses both).  The mean is the posterior mean q(x_{t-1} | x_t, x0_hat),
    which for an eps prediction equals Ho et al.'s 1/sqrt(alpha_t) (x_t - beta_t/sqrt(1-abar_t) eps)
    and for a 'mean' prediction (Ho et al.'s mu~ parameterisation) is the network output itself up to
    rounding; with ``clip_x0`` it is the posterior mean at the clipped x0 for every prediction type
    (the papers' code keeps the raw network mean for mu~ and clips only the reported x0).

    A 'mean' output and a 'learned' log-variance describe one step of the chain the network was
    trained on, so on a respaced process they are read with that chain's coefficients at
    ``process.network_t(t)`` (``net_*`` buffers): x0 from the original step's c1, c2, and the
    learned log-variance as the same fraction of the way from log beta~ to log beta.
    The process only looks up its coefficients at ``t``; the algebra is in :mod:`.parameterization`.
    """
    prediction = P.check_choice("prediction type", prediction or process.prediction, P.PREDICTIONS)
    variance = P.check_choice("variance type", variance or process.variance, P.VARIANCES)
    t = process.check_t(t, x_t)
    out, v_raw = P.split_variance_output(model_output, x_t, variance)

    alpha = process.extract(process.sqrt_alphas_cumprod, t, x_t)
    sigma = process.extract(process.sqrt_one_minus_alphas_cumprod, t, x_t)
    x0, eps = P.x0_eps_from_output(prediction, out, x_t, alpha, sigma,
                                   process.extract(process.net_posterior_mean_coef1, t, x_t),
                                   process.extract(process.net_posterior_mean_coef2, t, x_t))
    if clip_x0:
        x0 = clip_x0(x0) if callable(clip_x0) else x0.clamp(-1.0, 1.0)
        eps = P.eps_from_x0(x_t, x0, alpha, sigma)

    mean, _, _ = process.q_posterior(x0, x_t, t)

    min_log = process.extract(process.posterior_log_variance_clipped, t, x_t)
    if variance == "fixed_small":
        log_var = min_log.expand_as(x_t)
    elif variance == "fixed_large":
        log_var = process.extract(process.log_betas_large, t, x_t).expand_as(x_t)
    elif variance == "learned_range":
        log_var = P.learned_log_variance(v_raw, min_log, process.extract(process.log_betas, t, x_t))
    elif not process.is_respaced:  # learned: the network's log-variance, as is (Ho et al.'s learned diagonal)
        log_var = v_raw
    else:  # learned, respaced: the same position between the bounds of the respaced step
        log_var = P.relearned_log_variance(v_raw, process.extract(process.net_posterior_log_variance_clipped, t, x_t),
                                           process.extract(process.net_log_betas, t, x_t), min_log,
                                           process.extract(process.log_betas, t, x_t))
    return P.Prediction(x0=x0, eps=eps, mean=mean, log_var=log_var)
