"""Which time steps to train on, and which to keep when sampling with fewer steps.

* ``UniformSampler``: t ~ U{0..T-1}, weights 1.
* ``LossSecondMomentSampler``: Improved DDPM's importance sampler for L_vlb (Sec. 3.3): p_t is
  proportional to sqrt(E[L_t^2]) over the last 10 losses seen at t, mixed with a little uniform,
  and uniform until every t has its full history; weights 1 / (T p_t) keep the loss unbiased.
* ``LogNormalSampler``: EDM's training noise distribution (Karras et al. 2022), ln sigma ~
  N(P_mean, P_std^2), each draw taken to the step nearest in log-SNR; weights 1 (it changes the
  objective, as in EDM, rather than estimating the uniform one).
* ``space_timesteps`` + ``respace``: keep a subsequence of steps and build a new process whose
  betas are recomputed from the kept alpha_bar (Improved DDPM Sec. 4, respace.py), with the map
  back to the original indices for the network.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from .process import NETWORK_COEFS, GaussianDiffusion


class UniformSampler:
    def __init__(self, num_timesteps: int):
        self.num_timesteps = int(num_timesteps)

    def probabilities(self) -> np.ndarray:
        return np.full(self.num_timesteps, 1.0 / self.num_timesteps)

    def sample(self, batch_size: int, *, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.randint(0, self.num_timesteps, (batch_size,), generator=generator)
        return t.to(device), torch.ones(batch_size, device=device)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Uniform sampling ignores losses (same interface as the importance sampler)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class LossSecondMomentSampler(UniformSampler):
    def __init__(self, num_timesteps: int, history: int = 10, uniform_prob: float = 0.001):
        super().__init__(num_timesteps)
        self.history = int(history)
        self.uniform_prob = float(uniform_prob)
        self.loss_history = np.zeros((self.num_timesteps, self.history), dtype=np.float64)
        self.loss_counts = np.zeros(self.num_timesteps, dtype=np.int64)

    def warmed_up(self) -> bool:
        return bool((self.loss_counts == self.history).all())

    def probabilities(self) -> np.ndarray:
        if not self.warmed_up():
            return super().probabilities()
        w = np.sqrt(np.mean(self.loss_history**2, axis=-1))
        w = w / w.sum()
        return w * (1.0 - self.uniform_prob) + self.uniform_prob / self.num_timesteps

    def sample(self, batch_size: int, *, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        p = torch.from_numpy(self.probabilities())
        t = torch.multinomial(p, batch_size, replacement=True, generator=generator)
        weights = 1.0 / (self.num_timesteps * p[t])
        return t.to(device), weights.to(device=device, dtype=torch.float32)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Record per-example losses at their steps (gather across processes first under DDP)."""
        for ti, li in zip(t.detach().cpu().tolist(), losses.detach().double().cpu().tolist(), strict=True):
            if self.loss_counts[ti] == self.history:
                self.loss_history[ti, :-1] = self.loss_history[ti, 1:]
                self.loss_history[ti, -1] = li
            else:
                self.loss_history[ti, self.loss_counts[ti]] = li
                self.loss_counts[ti] += 1

    def state_dict(self) -> dict:
        return {"loss_history": self.loss_history.copy(), "loss_counts": self.loss_counts.copy()}

    def load_state_dict(self, state: dict) -> None:
        self.loss_history = np.asarray(state["loss_history"], dtype=np.float64).copy()
        self.loss_counts = np.asarray(state["loss_counts"], dtype=np.int64).copy()


def log_snr_of(alphas_cumprod) -> torch.Tensor:
    """log SNR = log(abar / (1 - abar)) per step, float64 (decreasing in t for positive betas)."""
    abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    return torch.log(abar) - torch.log1p(-abar)


def nearest_log_snr_step(log_snr_table: torch.Tensor, log_snr: torch.Tensor) -> torch.Tensor:
    """For each value of ``log_snr``, the step t whose ``log_snr_table[t]`` (decreasing in t) is nearest;
    values beyond either end go to the first or last step.  The step is the number of midpoints
    between neighbouring table entries that lie above the value (a tie goes to the smaller t)."""
    table = torch.as_tensor(log_snr_table, dtype=torch.float64)
    mid = 0.5 * (table[:-1] + table[1:])
    return torch.searchsorted(-mid, -torch.as_tensor(log_snr, dtype=torch.float64), side="left")


class LogNormalSampler(UniformSampler):
    """EDM's training distribution of the noise level (Karras et al. 2022, "Elucidating the Design Space
    of Diffusion-Based Generative Models", Table 1: ln sigma ~ N(P_mean, P_std^2), P_mean =
    -1.2, P_std = 1.2), on this discrete process.

    sigma is the noise level of x_t / sqrt(abar) = x0 + sigma eps, sigma^2 = (1 - abar) / abar = 1 / SNR,
    so log SNR = -2 ln sigma ~ N(-2 P_mean, (2 P_std)^2); each draw goes to the step nearest in log SNR.
    The weights are 1: the distribution *is* the objective's weighting over noise levels (as in EDM), not
    an importance sampler for the uniform loss.  One standard normal per example from ``generator``.
    """

    def __init__(self, num_timesteps: int, alphas_cumprod, mean: float = -1.2, std: float = 1.2):
        super().__init__(num_timesteps)
        self.log_snr = log_snr_of(alphas_cumprod).cpu()
        if self.log_snr.shape != (self.num_timesteps,):
            raise ValueError(f"alphas_cumprod must have one entry per step ({self.num_timesteps}), "
                             f"got shape {tuple(self.log_snr.shape)}")
        if not std > 0:
            raise ValueError(f"log-normal std must be > 0, got {std}")
        self.mean, self.std = float(mean), float(std)

    def probabilities(self) -> np.ndarray:
        """P(t) exactly: the normal mass of log SNR between the midpoints around step t."""
        mid = 0.5 * (self.log_snr[:-1] + self.log_snr[1:])
        inf = torch.tensor([float("inf")], dtype=torch.float64)
        edges = torch.cat([inf, mid, -inf])  # decreasing: step t owns (edges[t + 1], edges[t]]
        cdf = torch.special.ndtr((edges - (-2.0 * self.mean)) / (2.0 * self.std))
        return (cdf[:-1] - cdf[1:]).numpy()

    def sample(self, batch_size: int, *, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.randn(batch_size, generator=generator, dtype=torch.float64)
        t = nearest_log_snr_step(self.log_snr, -2.0 * (self.mean + self.std * z))
        return t.to(device), torch.ones(batch_size, device=device)


TIMESTEP_SAMPLERS = {"uniform": UniformSampler, "loss-second-moment": LossSecondMomentSampler,
                     "lognormal": LogNormalSampler}


def make_timestep_sampler(name: str, num_timesteps: int, **options) -> UniformSampler:
    """The sampler ``name`` over ``num_timesteps`` steps; ``options`` go to its constructor
    (``lognormal`` needs ``alphas_cumprod`` and takes ``mean`` / ``std``)."""
    try:
        cls = TIMESTEP_SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown timestep sampler {name!r}; valid: {', '.join(TIMESTEP_SAMPLERS)}") from None
    return cls(num_timesteps, **options)


# --- respacing --------------------------------------------------------------------------------

def space_timesteps(num_timesteps: int, spec: str | int | Sequence[int]) -> list[int]:
    """Kept step indices (sorted) for a respacing spec.

    * ``"ddimN"``: stride s with ``len(range(0, T, s)) == N`` (DDIM's uniform stride).
    * an int ``N`` or ``"N"``: N steps spread evenly over the whole range (first and last kept).
    * a list of counts ``[10, 15, 20]`` or ``"10,15,20"``: split 0..T-1 into that many equal
      sections and spread each count evenly inside its section.
    """
    T = int(num_timesteps)
    if isinstance(spec, str):
        s = spec.strip()
        if s.startswith("ddim"):
            try:
                n = int(s[4:])
            except ValueError:
                raise ValueError(f"bad respacing {spec!r}: expected 'ddimN' with an integer N") from None
            _check_count(n, T)
            for stride in range(1, T + 1):
                if len(range(0, T, stride)) == n:
                    return list(range(0, T, stride))
            raise ValueError(f"cannot take exactly {n} steps of T = {T} with a fixed stride; "
                             f"use a count such as '{n}' instead of 'ddim{n}'")
        try:
            counts = [int(p) for p in s.split(",")]
        except ValueError:
            raise ValueError(f"bad respacing {spec!r}: expected 'ddimN', 'N' or comma-separated counts") from None
    elif isinstance(spec, (int, np.integer)):
        counts = [int(spec)]
    else:
        counts = [int(c) for c in spec]
    if not counts:
        raise ValueError("respacing needs at least one section count")
    if len(counts) > T:
        raise ValueError(f"cannot split T = {T} steps into {len(counts)} sections")
    size, extra = divmod(T, len(counts))
    kept: list[int] = []
    start = 0
    for i, n in enumerate(counts):
        length = size + (1 if i < extra else 0)
        _check_count(n, length, where=f"section {i} ({length} steps)")
        frac = (length - 1) / (n - 1) if n > 1 else 1.0
        kept.extend(start + round(j * frac) for j in range(n))
        start += length
    return sorted(set(kept))


def _check_count(n: int, available: int, where: str = "the process") -> None:
    if n < 1 or n > available:
        raise ValueError(f"cannot keep {n} steps from {where}: allowed 1..{available}")


def respace(process: GaussianDiffusion, use_timesteps: Iterable[int]) -> GaussianDiffusion:
    """A process over the kept steps with betas recomputed from their alpha_bar.

    beta_new_i = 1 - abar[k_i] / abar[k_{i-1}] (abar before the first kept step is 1), so the
    marginals q(x_{k_i} | x0) are unchanged.  ``timestep_map`` sends new indices to original ones.
    """
    kept = sorted({int(k) for k in use_timesteps})
    if not kept:
        raise ValueError("respacing needs at least one kept step")
    if kept[0] < 0 or kept[-1] >= process.num_timesteps:
        raise ValueError(f"kept steps must lie in 0..{process.num_timesteps - 1}, got {kept[0]}..{kept[-1]}")
    abar = process.alphas_cumprod.cpu().numpy()
    base_map = process.timestep_map.cpu().numpy()
    prev = 1.0
    betas = []
    for k in kept:
        betas.append(1.0 - abar[k] / prev)
        prev = abar[k]
    net = {name: getattr(process, "net_" + name).cpu().numpy()[kept] for name in NETWORK_COEFS}
    return GaussianDiffusion(np.asarray(betas), prediction=process.prediction, variance=process.variance,
                             timestep_map=base_map[kept], network_coefs=net).to(process.alphas_cumprod.device)


def respaced(process: GaussianDiffusion, spec: str | int | Sequence[int]) -> GaussianDiffusion:
    """``respace(process, space_timesteps(T, spec))``."""
    return respace(process, space_timesteps(process.num_timesteps, spec))
