"""ddpmkit: denoising diffusion probabilistic models, implemented as the papers state them."""

from .diffusion import (
    GaussianDiffusion,
    LossSecondMomentSampler,
    UniformSampler,
    losses,
    parameterization,
    respace,
    respaced,
    schedules,
    space_timesteps,
)
from .pipeline import Pipeline, load, save

__version__ = "0.1.0"

__all__ = [
    "GaussianDiffusion", "LossSecondMomentSampler", "Pipeline", "UniformSampler", "load", "losses", "parameterization",
    "save",
    "respace", "respaced", "schedules", "space_timesteps", "__version__",
]
