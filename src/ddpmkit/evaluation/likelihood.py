"""Bits/dim of the full variational bound over a dataset, with its breakdown.

    L = L_prior + sum_{t>=1} L_t (KL terms) + L_0 (decoder NLL),  all in bits/dim,

evaluated exactly (every t, one noise draw per t and example) with
:func:`ddpmkit.diffusion.losses.bpd_terms`.  Per-example totals give the mean and its standard
error; per-t means of the terms and of the x0-prediction MSE are kept for rate-distortion.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..diffusion.losses import bpd_terms


def _mean_se(v: np.ndarray) -> tuple[float, float]:
    n = len(v)
    return float(v.mean()), (float(v.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan"))


@dataclass
class NLLResult:
    """Per-example bound terms (bits/dim) and per-t means over all examples."""

    total: np.ndarray             # (N,) full bound
    prior: np.ndarray             # (N,) L_prior = KL(q(x_T|x0) || N(0, I))
    decoder: np.ndarray           # (N,) L_0 = -log p(x0 | x_1)
    kl: np.ndarray                # (N,) sum of L_t for t >= 1
    vb_mean: np.ndarray           # (T,) mean L_t per time index (vb_mean[0] = decoder)
    x0_mse_mean: np.ndarray       # (T,) mean squared error of the predicted x0 on [-1, 1], per t
    eps_mse_mean: np.ndarray      # (T,)
    extra: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.total)

    def summary(self) -> dict:
        """mean and standard error of each part; per-quarter sums of the KL terms."""
        out = {"n": self.n, "timesteps": len(self.vb_mean)}
        for name in ("total", "prior", "kl", "decoder"):
            m, se = _mean_se(getattr(self, name))
            out[f"{name}_bpd"] = m
            out[f"{name}_bpd_se"] = se
        T = len(self.vb_mean)
        edges = np.linspace(0, T, 5).round().astype(int)
        out["quarters"] = [{"t_from": int(a), "t_to": int(b) - 1, "bpd": float(self.vb_mean[max(a, 1):b].sum())}
                           for a, b in zip(edges[:-1], edges[1:], strict=True)]
        return out

    def to_dict(self, per_t: bool = True) -> dict:
        d = {**self.summary(), **self.extra}
        if per_t:
            d["per_t"] = {"vb_bpd": self.vb_mean.tolist(), "x0_mse": self.x0_mse_mean.tolist(),
                          "eps_mse": self.eps_mse_mean.tolist()}
        return d


def _as_batch(item) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(item, torch.Tensor):
        return item, None
    x, y = item
    return x, y


def evaluate_nll(model_fn: Callable[..., torch.Tensor], process, x0_batches: Iterable, *, seed: int = 0,
                 progress: Callable | None = None, device: str | torch.device = "cpu") -> NLLResult:
    """Evaluate the full bound on batches of data in model range.

    ``x0_batches`` yields tensors ``x0`` or pairs ``(x0, y)`` (``y`` is passed to ``model_fn`` as
    the class label, or None).  ``model_fn(x_t, t, y=None)`` is the network (it receives the network's
    time index).  The noise comes from one generator seeded with ``seed``, so results are reproducible.
    """
    g = torch.Generator(device=torch.device(device)).manual_seed(seed)
    totals, priors, decs, kls = [], [], [], []
    vb_sum = x0_sum = eps_sum = None
    n = 0
    for item in x0_batches:
        x0, y = _as_batch(item)
        x0 = x0.to(device)
        kwargs = {} if y is None else {"y": y.to(device)}
        out = bpd_terms(process, model_fn, x0, generator=g, model_kwargs=kwargs, progress=progress)
        vb = out["vb"].cpu()
        totals.append(out["total_bpd"].cpu().numpy())
        priors.append(out["prior_bpd"].cpu().numpy())
        decs.append(vb[:, 0].numpy())
        kls.append(vb[:, 1:].sum(1).numpy())
        s_vb, s_x0, s_eps = vb.sum(0), out["x0_mse"].cpu().sum(0), out["eps_mse"].cpu().sum(0)
        vb_sum = s_vb if vb_sum is None else vb_sum + s_vb
        x0_sum = s_x0 if x0_sum is None else x0_sum + s_x0
        eps_sum = s_eps if eps_sum is None else eps_sum + s_eps
        n += x0.shape[0]
    if n == 0:
        raise ValueError("evaluate_nll got no data")
    return NLLResult(np.concatenate(totals), np.concatenate(priors), np.concatenate(decs), np.concatenate(kls),
                     (vb_sum / n).numpy(), (x0_sum / n).numpy(), (eps_sum / n).numpy())


def dataset_batches(data, n: int | None, batch_size: int, seed: int = 0, with_labels: bool = False):
    """Batches ``(x0, y)`` of a seeded subset of ``n`` items of a :class:`ddpmkit.data.Dataset` (all if None)."""
    total = len(data)
    if n is not None and n < total:
        idx = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n].sort().values
    else:
        idx = torch.arange(total)
    for i in range(0, len(idx), batch_size):
        x, y = data.batch(idx[i:i + batch_size])
        yield x, (y if with_labels else None)


__all__ = ["NLLResult", "evaluate_nll", "dataset_batches"]
