"""What every sampler shares: the time grid, x_T, labels and guidance, and the model call.

The front door :func:`run_loop` (behind :func:`ddpmkit.samplers.sample`) builds these once; a
sampler is only its loop ``loop(predict, process, x, *, generator, callback, **own_options)``.

Conventions (all samplers):

* ``model_fn(x_t, t, y=None)`` returns the raw network output; it is always called with the
  *network* time index ``process.network_t(t)`` and only gets ``y`` when labels are in play, so a
  plain ``lambda x, t: ...`` works for unconditional models.  Its output goes through the one
  model-output adapter, ``process.p_mean_variance``; no sampler re-derives x0 or eps itself.
* Time grids are increasing lists of integer indices of the discrete schedule.  Every sampler,
  including the continuous-time ODE solvers, evaluates the network only at those integer indices:
  the network was trained there, so the query is exact, and the solvers use the exact
  ``alpha_bar`` of those indices for their coefficients (the continuous schedule is never
  interpolated).  A grid of n indices is turned into a respaced process (``respace``), so the
  samplers loop over that process's own steps ``n-1 .. 0``.
* ``callback(step, t, x_t, x0_pred)`` is called once per step, before the update, with the step
  number (0-based), the network time index ``t`` (int) of ``x_t``, the state and the prediction of
  x0 from it.  (A loop calls the callback it is given with its own index ``i`` of the respaced
  process; the front door maps ``i`` to the network's ``t`` and drives the progress bar.)
* Randomness comes only from ``generator`` (or from a passed-in ``x_T``).  Noise is drawn on the
  generator's device and moved, so a CPU generator gives the same numbers on any device.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..diffusion.parameterization import LEARNED_VARIANCES, Prediction
from ..diffusion.process import GaussianDiffusion
from ..diffusion.timesteps import respace

SPACINGS = ("uniform", "leading", "quadratic", "logsnr", "karras")

ModelFn = Callable[..., torch.Tensor]
Callback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


# --- time grids ------------------------------------------------------------------------------

def check_steps(steps, T: int) -> int:
    """``steps`` (None = all T) as an int in 1..T, with an error naming the allowed range."""
    if steps is None:
        return T
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
        raise TypeError(f"steps must be an int in 1..{T} or an increasing sequence of time indices, "
                        f"got {type(steps).__name__}")
    if steps < 1 or steps > T:
        raise ValueError(f"steps must be in 1..{T} (the process has T = {T} steps), got {steps}")
    return int(steps)


def _strictly_increasing(idx: np.ndarray, T: int) -> list[int]:
    """Sorted indices made distinct by moving collisions to free neighbours (n <= T always fits)."""
    idx = np.clip(np.sort(np.asarray(idx, dtype=np.int64)), 0, T - 1)
    n = idx.size
    for i in range(1, n):  # push up
        idx[i] = max(idx[i], idx[i - 1] + 1)
    idx[-1] = min(idx[-1], T - 1)
    for i in range(n - 2, -1, -1):  # pull down from the top
        idx[i] = min(idx[i], idx[i + 1] - 1)
    return [int(i) for i in idx]


def _nearest(grid: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Index of the grid value nearest each target."""
    return np.abs(grid[:, None] - targets[None, :]).argmin(axis=0)


def sampling_timesteps(process: GaussianDiffusion, steps=None, spacing: str = "uniform",
                       *, rho: float = 7.0) -> list[int]:
    """Increasing integer time indices (of ``process``) at which a sampler queries the network.

    ``steps`` is a count in 1..T (None = all T) or an explicit increasing sequence of indices.
    Spacings for a count n (all but 'leading' contain the last index T-1, and 0 when n > 1):

    * ``uniform``   - evenly spaced in t: round(linspace(0, T-1, n)).
    * ``leading``   - the DDIM paper's uniform stride c = T // n: 0, c, 2c, ...
    * ``quadratic`` - the DDIM paper's quadratic spacing, (T-1) (i / (n-1))^2 (denser near data).
    * ``logsnr``    - evenly spaced in log-SNR lambda = log(alpha / sigma) (DPM-Solver's choice).
    * ``karras``    - Karras et al. (2022): sigma = sqrt((1 - abar) / abar) spaced as
      (sigma_max^(1/rho) + u (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, rho = 7.

    The continuous targets of 'logsnr' and 'karras' are snapped to the nearest index of the
    discrete schedule (in lambda resp. log sigma); collisions are moved to free neighbours, so the
    result always has exactly n distinct indices.
    """
    T = process.num_timesteps
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; valid spacings: {', '.join(SPACINGS)}")
    if steps is not None and not isinstance(steps, (int, np.integer)):
        if isinstance(steps, (str, bytes)) or not isinstance(steps, (Sequence, np.ndarray, torch.Tensor)):
            raise TypeError(f"steps must be an int in 1..{T} or an increasing sequence of time indices, "
                            f"got {type(steps).__name__}")
        kept = [int(k) for k in (steps.tolist() if hasattr(steps, "tolist") else steps)]
        increasing = all(b > a for a, b in zip(kept[:-1], kept[1:], strict=True))
        if not kept or not increasing or kept[0] < 0 or kept[-1] >= T:
            raise ValueError(f"explicit time indices must be a non-empty, strictly increasing sequence in "
                             f"0..{T - 1}, got {kept[:5]}{'...' if len(kept) > 5 else ''}")
        return kept
    n = check_steps(steps, T)
    if n == 1:
        return [T - 1]
    u = np.arange(n, dtype=np.float64) / (n - 1)  # 0 .. 1
    abar = process.alphas_cumprod.detach().cpu().double().numpy()
    if spacing == "uniform":
        idx = np.round(u * (T - 1))
    elif spacing == "leading":
        idx = np.arange(n) * (T // n)
    elif spacing == "quadratic":
        idx = np.round(u**2 * (T - 1))
    elif spacing == "logsnr":
        lam = 0.5 * (np.log(abar) - np.log1p(-abar))
        idx = _nearest(lam, lam[0] + u * (lam[-1] - lam[0]))
    else:  # karras
        log_sig = 0.5 * (np.log1p(-abar) - np.log(abar))
        smin, smax = math.exp(log_sig[0]), math.exp(log_sig[-1])
        sig = (smax ** (1 / rho) + (1 - u) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
        idx = _nearest(log_sig, np.log(sig))
    return _strictly_increasing(idx, T)


def sampling_process(process: GaussianDiffusion, steps=None, spacing: str = "uniform") -> GaussianDiffusion:
    """The process restricted to ``sampling_timesteps`` (the process itself when all steps are kept)."""
    kept = sampling_timesteps(process, steps, spacing)
    if len(kept) == process.num_timesteps:
        return process
    return respace(process, kept)


# --- x_T and noise ---------------------------------------------------------------------------

def randn(shape, generator: torch.Generator | None, device, dtype) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device, then moved to ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=dtype).to(device)


def initial_x(process: GaussianDiffusion, x_T_or_shape, generator, device, dtype) -> torch.Tensor:
    """A given x_T (moved/cast if device/dtype are given) or N(0, I) noise of the given shape."""
    if isinstance(x_T_or_shape, torch.Tensor):
        return x_T_or_shape.to(device=device or x_T_or_shape.device, dtype=dtype or x_T_or_shape.dtype)
    try:
        shape = tuple(int(s) for s in x_T_or_shape)
    except TypeError:
        raise TypeError(f"x_T_or_shape must be a tensor or a shape, "
                        f"got {type(x_T_or_shape).__name__}") from None
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"shape must be non-empty with positive sizes, got {shape}")
    device = torch.device(device) if device is not None else process.alphas_cumprod.device
    return randn(shape, generator, device, dtype or torch.float32)


# --- classifier-free guidance ----------------------------------------------------------------

def model_num_classes(model_fn) -> int | None:
    """``model_fn.num_classes``, else ``model_fn.config.num_classes`` (an ``nn.Module``); None if absent."""
    n = getattr(model_fn, "num_classes", None)
    if n is None:
        n = getattr(getattr(model_fn, "config", None), "num_classes", None)
    return None if n is None else int(n)


def guided_model_fn(model_fn: ModelFn, y: torch.Tensor, w: float, null_label: int, *,
                    learned_variance: bool = False) -> ModelFn:
    """Classifier-free guidance (Ho & Salimans 2022) as a model: out = out_null + w (out_y - out_null).

    One forward pass on the doubled batch [x, x] with labels [y, null].  The combination is done on
    the raw prediction (eps, x0, v or mean); because eps is an affine function of each at fixed
    (x_t, t) and the weights (1 - w) + w sum to one, this equals combining in eps space
    (eps = eps_null + w (eps_y - eps_null)) for every prediction type.  With a learned variance
    (2C output channels) only the first C channels are combined; the variance channels are the
    conditional ones.  w = 1 is the conditional model, w = 0 the unconditional one.
    """
    w = float(w)

    def fn(x_t: torch.Tensor, t: torch.Tensor, y_ignored=None) -> torch.Tensor:
        b = x_t.shape[0]
        labels = torch.as_tensor(y, device=x_t.device).reshape(-1).expand(b).long()
        null = torch.full_like(labels, int(null_label))
        t2 = torch.as_tensor(t, device=x_t.device).reshape(-1).expand(b)
        out = model_fn(torch.cat([x_t, x_t]), torch.cat([t2, t2]), y=torch.cat([labels, null]))
        cond, uncond = out[:b], out[b:]
        if learned_variance:
            c = x_t.shape[1]
            mixed = uncond[:, :c] + w * (cond[:, :c] - uncond[:, :c])
            return torch.cat([mixed, cond[:, c:]], dim=1)
        return uncond + w * (cond - uncond)

    fn.num_classes = None  # a guided model is used as an unconditional one
    return fn


def check_labels(y, batch: int, num_classes: int, device) -> torch.Tensor:
    """``y`` as ``batch`` long labels in 0..num_classes (num_classes = the null label)."""
    y = torch.as_tensor(y, device=device)
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(f"y must hold integer class labels, got dtype {y.dtype}")
    y = y.reshape(-1).long()
    if y.numel() == 1:
        y = y.expand(batch)
    if y.shape != (batch,):
        raise ValueError(f"y must be one label or {batch} labels (one per sample), "
                         f"got shape {tuple(y.shape)}")
    if int(y.min()) < 0 or int(y.max()) > num_classes:
        raise ValueError(f"labels must be in 0..{num_classes - 1} (or {num_classes} = null), "
                         f"got values in {int(y.min())}..{int(y.max())}")
    return y


def conditioning(model_fn: ModelFn, process: GaussianDiffusion, x: torch.Tensor, *, y=None,
                 guidance: float | None = None, num_classes: int | None = None):
    """``(model_fn, labels)`` for the loop: the guided model (labels baked in, so None returned) with
    ``guidance``, the checked labels without it, or ``(model_fn, None)`` for an unconditional call."""
    if guidance is None and y is None:
        return model_fn, None
    nc = num_classes if num_classes is not None else model_num_classes(model_fn)
    if guidance is None:
        labels = (check_labels(y, x.shape[0], nc, x.device) if nc is not None
                  else torch.as_tensor(y, device=x.device))
        return model_fn, labels
    if not math.isfinite(float(guidance)):
        raise ValueError(f"guidance scale must be a finite number, got {guidance}")
    if nc is None:
        raise ValueError(
            "classifier-free guidance needs a class-conditional model, but this model is "
            "unconditional (no num_classes on model_fn or model_fn.config); pass num_classes=K "
            "if it is conditional with null label K")
    if y is None:
        raise ValueError("classifier-free guidance needs class labels y (one or one per sample)")
    labels = check_labels(y, x.shape[0], nc, x.device)
    guided = guided_model_fn(model_fn, labels, guidance, nc, learned_variance=process.variance in LEARNED_VARIANCES)
    return guided, None


class Predictor:
    """``predict(x, i) -> Prediction`` at index i of ``process``: one network call (at the network's
    time index, with ``labels`` when given) through the model-output adapter.  Counts calls in ``nfe``."""

    def __init__(self, model_fn: ModelFn, process: GaussianDiffusion, *, labels: torch.Tensor | None = None,
                 clip_x0=False):
        self.model_fn, self.process, self.labels, self.clip_x0, self.nfe = model_fn, process, labels, clip_x0, 0

    def __call__(self, x: torch.Tensor, i: int) -> Prediction:
        t = torch.full((x.shape[0],), int(i), dtype=torch.long, device=x.device)
        net_t = self.process.network_t(t)
        if self.labels is None:
            out = self.model_fn(x, net_t)
        else:
            out = self.model_fn(x, net_t, y=self.labels)
        self.nfe += 1
        return self.process.p_mean_variance(out, x, t, clip_x0=self.clip_x0)


def abar_list(process: GaussianDiffusion) -> list[float]:
    """alpha_bar of each index as Python floats (float64 scalars keep per-step work tiny)."""
    return [float(a) for a in process.alphas_cumprod.detach().cpu().double()]


# --- the front door -------------------------------------------------------------------------

LOOP_ARGS = ("generator", "callback")


def loop_options(loop) -> tuple[str, ...]:
    """The keyword options a loop takes besides ``generator`` and ``callback``."""
    params = inspect.signature(loop).parameters.values()
    return tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name not in LOOP_ARGS)


def check_options(name: str, loop, options: dict) -> None:
    """Options a sampler does not take are an error naming the ones it does."""
    valid = loop_options(loop)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"sampler {name!r} takes no option {unknown[0]!r}; its options: "
                         f"{', '.join(valid) or 'none'}")


class _Reporter:
    """The callback a loop gets: maps its index to the network's t, calls the user's callback and
    advances the progress bar (tqdm on stderr)."""

    def __init__(self, callback: Callback | None, net_t: list[int], progress: bool, desc: str):
        self.callback, self.net_t, self.bar = callback, net_t, None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=len(net_t), desc=desc)

    def __call__(self, step: int, i: int, x: torch.Tensor, x0: torch.Tensor) -> None:
        if self.callback is not None:
            self.callback(step, self.net_t[i], x, x0)
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@torch.no_grad()
def run_loop(name: str, loop, model_fn: ModelFn, process: GaussianDiffusion, x_T_or_shape, *,
             spacing: str, steps=None, generator: torch.Generator | None = None, clip_x0=False,
             guidance: float | None = None, y=None, num_classes: int | None = None,
             callback: Callback | None = None, progress: bool = False, device=None, dtype=None,
             **options) -> torch.Tensor:
    """Build the time grid (a respaced process), x_T, labels / guidance and clipping once, then run
    ``loop(predict, process, x, generator=, callback=, **options)`` on them."""
    check_options(name, loop, options)
    proc = sampling_process(process, steps, spacing)
    x = initial_x(process, x_T_or_shape, generator, device, dtype)
    fn, labels = conditioning(model_fn, proc, x, y=y, guidance=guidance, num_classes=num_classes)
    predict = Predictor(fn, proc, labels=labels, clip_x0=clip_x0)
    report = _Reporter(callback, proc.timestep_map.tolist(), progress, name)
    try:
        return loop(predict, proc, x, generator=generator, callback=report, **options)
    finally:
        report.close()
