"""The Gaussian diffusion process: schedules, the process, parameterizations, losses, timesteps."""

from . import losses, parameterization, schedules, timesteps
from .parameterization import Prediction
from .process import GaussianDiffusion, model_output_to_prediction
from .timesteps import LossSecondMomentSampler, UniformSampler, respace, respaced, space_timesteps

__all__ = [
    "GaussianDiffusion", "Prediction", "model_output_to_prediction", "losses", "parameterization",
    "schedules", "timesteps", "UniformSampler", "LossSecondMomentSampler", "respace", "respaced",
    "space_timesteps",
]
