"""Denoising networks: the DDPM / Improved DDPM U-Net and a small MLP for 2-D toy data.

All networks are called as ``net(x, t, y=None)`` with ``t`` the integer (or float) time index and
``y`` optional class labels; they know nothing about noise schedules.
"""

from .convert_diffusers import load_diffusers_unet, save_diffusers_unet
from .factory import NETWORK_KINDS, build_network, config_from_dict, config_to_dict, network_config
from .layers import AttentionBlock, Downsample, Dropout, ResBlock, TimeMLP, Upsample, timestep_embedding
from .mlp import MLP_PRESETS, MLPConfig, MLPDenoiser, mlp_preset
from .speed import maybe_compile
from .unet import PRESETS, UNet, UNetConfig, unet_preset

__all__ = [
    "AttentionBlock",
    "Downsample",
    "Dropout",
    "MLPConfig",
    "MLPDenoiser",
    "MLP_PRESETS",
    "NETWORK_KINDS",
    "PRESETS",
    "ResBlock",
    "TimeMLP",
    "UNet",
    "UNetConfig",
    "Upsample",
    "build_network",
    "config_from_dict",
    "config_to_dict",
    "load_diffusers_unet",
    "maybe_compile",
    "mlp_preset",
    "network_config",
    "save_diffusers_unet",
    "timestep_embedding",
    "unet_preset",
]
