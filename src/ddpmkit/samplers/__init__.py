"""Samplers: one plain function per sampler, all with one signature.

``sampler(model_fn, process, x_T_or_shape, *, steps=None, spacing=..., generator=None,
clip_x0=False, guidance=None, y=None, num_classes=None, callback=None, progress=False,
device=None, dtype=None, **specific) -> x0``

=========  ==============================================  ====================  ================
name       function                                        specific              NFE for ``steps``
=========  ==============================================  ====================  ================
ddpm       :func:`ddpm_sample` (ancestral, respaced)        -                     steps
ddim       :func:`ddim_sample`                             ``eta=0.0``           steps
dpm++      :func:`dpm_solver_sample` (2M; 3M)              ``order=2``           steps
heun       :func:`heun_sample`                             -                     2 * steps - 1
=========  ==============================================  ====================  ================

``steps`` is the number of time indices visited (None = all T) or an explicit increasing list of
them; see :func:`sampling_timesteps` for the spacings.  :func:`ddim_invert` maps data to x_T.
"""

from __future__ import annotations

from .common import (
    SPACINGS,
    Predictor,
    guided_model_fn,
    model_num_classes,
    sampling_process,
    sampling_timesteps,
)
from .ddim import ddim_invert, ddim_sample
from .ddpm import ddpm_sample
from .ode import dpm_solver_sample, heun_sample

SAMPLERS = {
    "ddpm": ddpm_sample,
    "ddim": ddim_sample,
    "dpm++": dpm_solver_sample,
    "heun": heun_sample,
}


def get_sampler(name: str):
    """The sampler function registered under ``name``."""
    try:
        return SAMPLERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown sampler {name!r}; valid samplers: {', '.join(SAMPLERS)}") from None


def sample(name: str, model_fn, process, x_T_or_shape, **kwargs):
    """``get_sampler(name)(model_fn, process, x_T_or_shape, **kwargs)``."""
    return get_sampler(name)(model_fn, process, x_T_or_shape, **kwargs)


def network_evaluations(name: str, steps: int) -> int:
    """Network evaluations (NFE) of sampler ``name`` with ``steps`` time indices (guidance runs
    them on a doubled batch but does not add evaluations)."""
    get_sampler(name)
    return 2 * steps - 1 if name == "heun" else steps


def steps_for_nfe(name: str, nfe: int) -> int:
    """The largest ``steps`` whose evaluations do not exceed ``nfe``."""
    get_sampler(name)
    return (nfe + 1) // 2 if name == "heun" else nfe


__all__ = [
    "SAMPLERS", "SPACINGS", "Predictor", "ddim_invert", "ddim_sample", "ddpm_sample", "dpm_solver_sample",
    "get_sampler", "guided_model_fn", "heun_sample", "model_num_classes", "network_evaluations", "sample",
    "sampling_process", "sampling_timesteps", "steps_for_nfe",
]
