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

__version__ = "0.1.0"

__all__ = [
    "GaussianDiffusion", "LossSecondMomentSampler", "UniformSampler", "losses", "parameterization",
    "respace", "respaced", "schedules", "space_timesteps", "__version__",
]
