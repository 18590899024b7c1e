"""Samplers: one front door, :func:`sample`, and one short loop per sampler.

``sample(name, model_fn, process, x_T_or_shape, *, steps=None, spacing=None, generator=None,
clip_x0=False, guidance=None, y=None, num_classes=None, callback=None, progress=False, device=None,
dtype=None, **options) -> x0``

The front door builds the time grid (a respaced process), x_T, the labels / guided model and the
clipping once; a sampler is only its loop ``loop(predict, process, x, *, generator, callback,
**own_options)`` (k-diffusion's shape).  Options a loop does not take are an error.

=========  ==============================  ===========  ========  =============  ==================
name       loop                            options      spacing   default steps  NFE for ``steps``
=========  ==============================  ===========  ========  =============  ==================
ddpm       :func:`ddpm_loop` (ancestral)   -            uniform   all T          steps
ddim       :func:`ddim_loop`               ``eta=0``    uniform   50             steps
dpm++      :func:`dpm_solver_loop` (2M/3M) ``order=2``  logsnr    50             steps
heun       :func:`heun_loop`               -            karras    50             2 * steps - 1
=========  ==============================  ===========  ========  =============  ==================

``steps`` is the number of time indices visited (None = all T) or an explicit increasing list of
them; see :func:`sampling_timesteps` for the spacings.  The "default steps" column is what a caller
that does not choose (the CLI, ``runs.generate``) gets: :func:`default_steps`.  To add a sampler,
write its loop and add one line to ``SAMPLERS``.  :func:`ddim_invert` maps data to x_T.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .common import (
    SPACINGS,
    Predictor,
    guided_model_fn,
    model_num_classes,
    run_loop,
    sampling_process,
    sampling_timesteps,
)
from .ddim import ddim_invert_loop, ddim_loop
from .ddpm import ddpm_loop
from .ode import dpm_solver_loop, heun_loop

DEFAULT_STEPS = 50


@dataclass(frozen=True)
class Sampler:
    loop: Callable
    spacing: str = "uniform"                     # the time grid when the caller gives none
    nfe_per_step: int = 1                        # network evaluations: nfe_per_step * steps - extra
    extra: int = 0
    all_steps: bool = False                      # default steps: all T (ancestral) or DEFAULT_STEPS

    def nfe(self, steps: int) -> int:
        return self.nfe_per_step * steps - self.extra


SAMPLERS = {
    "ddpm": Sampler(ddpm_loop, all_steps=True),
    "ddim": Sampler(ddim_loop),
    "dpm++": Sampler(dpm_solver_loop, spacing="logsnr"),
    "heun": Sampler(heun_loop, spacing="karras", nfe_per_step=2, extra=1),
}


def get_sampler(name: str) -> Sampler:
    """The sampler registered under ``name``."""
    try:
        return SAMPLERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown sampler {name!r}; valid samplers: {', '.join(SAMPLERS)}") from None


def default_steps(name: str, T: int) -> int:
    """The number of steps used when the caller does not choose: all T for ancestral DDPM, else
    min(DEFAULT_STEPS, T).  The one place this default lives."""
    return T if get_sampler(name).all_steps else min(DEFAULT_STEPS, T)


def sample(name: str, model_fn, process, x_T_or_shape, *, spacing: str | None = None, **kwargs):
    """Sample with sampler ``name``; ``spacing`` None is the sampler's own (see the table above)."""
    s = get_sampler(name)
    return run_loop(name, s.loop, model_fn, process, x_T_or_shape, spacing=spacing or s.spacing, **kwargs)


def network_evaluations(name: str, steps: int) -> int:
    """Network evaluations (NFE) of sampler ``name`` with ``steps`` time indices (guidance runs
    them on a doubled batch but does not add evaluations)."""
    return get_sampler(name).nfe(steps)


def steps_for_nfe(name: str, nfe: int) -> int:
    """The largest ``steps`` whose evaluations do not exceed ``nfe``."""
    s = get_sampler(name)
    return (nfe + s.extra) // s.nfe_per_step


def _named(name: str):
    def fn(model_fn, process, x_T_or_shape, **kwargs):
        return sample(name, model_fn, process, x_T_or_shape, **kwargs)

    fn.__name__ = fn.__qualname__ = f"{name.replace('++', 'pp')}_sample"
    fn.__doc__ = f"``sample({name!r}, ...)``; the loop: {SAMPLERS[name].loop.__doc__}"
    return fn


ddpm_sample, ddim_sample = _named("ddpm"), _named("ddim")
dpm_solver_sample, heun_sample = _named("dpm++"), _named("heun")


def ddim_invert(model_fn, process, x0, *, spacing: str = "uniform", **kwargs):
    """Deterministic DDIM run forwards, x0 -> x_T (``fixed_point_iters`` refines each step)."""
    return run_loop("ddim-invert", ddim_invert_loop, model_fn, process, x0, spacing=spacing, **kwargs)


__all__ = [
    "DEFAULT_STEPS", "SAMPLERS", "SPACINGS", "Predictor", "Sampler", "ddim_invert", "ddim_sample", "ddpm_sample",
    "default_steps", "dpm_solver_sample", "get_sampler", "guided_model_fn", "heun_sample", "model_num_classes",
    "network_evaluations", "run_loop", "sample", "sampling_process", "sampling_timesteps", "steps_for_nfe",
]
