"""One entry point for the trainer and checkpoints: network kind + preset + overrides -> module.

build_network("unet", "fashion-mnist", num_classes=10)
build_network("mlp", "toy2d")
build_network(config)                      # a UNetConfig or MLPConfig
cfg = config_from_dict(config_to_dict(net.config))   # plain dict for JSON/TOML checkpoints
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from ._presets import replace_fields
from .mlp import MLPConfig, MLPDenoiser, mlp_preset
from .unet import UNet, UNetConfig, unet_preset

__all__ = ["NETWORK_KINDS", "network_config", "build_network", "config_to_dict", "config_from_dict"]

NetworkConfig = UNetConfig | MLPConfig

# kind -> (config class, preset function, network class, default preset)
NETWORK_KINDS: dict[str, tuple[type, Any, type, str]] = {
    "unet": (UNetConfig, unet_preset, UNet, "ddpm-cifar10"),
    "mlp": (MLPConfig, mlp_preset, MLPDenoiser, "toy2d"),
}


def _kind_entry(kind: str):
    if kind not in NETWORK_KINDS:
        raise ValueError(f"unknown network kind {kind!r}; valid kinds: {', '.join(NETWORK_KINDS)}")
    return NETWORK_KINDS[kind]


def _kind_of(config: NetworkConfig) -> str:
    for kind, (cls, *_rest) in NETWORK_KINDS.items():
        if isinstance(config, cls):
            return kind
    raise TypeError(f"not a network config: {type(config).__name__}")


def network_config(kind: str, preset: str | None = None, **overrides) -> NetworkConfig:
    """Config of ``kind`` ("unet" or "mlp") from a named preset (default per kind) plus overrides."""
    _cls, preset_fn, _net, default = _kind_entry(kind)
    return preset_fn(preset or default, **overrides)


def build_network(kind: str | NetworkConfig, preset: str | None = None, **overrides) -> nn.Module:
    """Instantiate a network from a kind + preset + overrides, or directly from a config object."""
    if isinstance(kind, str):
        config = network_config(kind, preset, **overrides)
    else:
        if preset is not None:
            raise ValueError("pass either a config object or a kind and a preset name, not both")
        config = replace_fields(kind, overrides)
    _cls, _fn, net_cls, _default = _kind_entry(_kind_of(config))
    return net_cls(config)


def config_to_dict(config: NetworkConfig) -> dict[str, Any]:
    """Plain JSON/TOML-friendly dict (tuples become lists) with a ``"kind"`` key."""
    out: dict[str, Any] = {"kind": _kind_of(config)}
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def config_from_dict(d: dict[str, Any]) -> NetworkConfig:
    """Inverse of :func:`config_to_dict`. Missing fields take the dataclass defaults (not a preset's);
    unknown keys raise a ``ValueError`` that names the valid ones."""
    d = dict(d)
    kind = d.pop("kind", "unet")
    cls, *_rest = _kind_entry(kind)
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(valid))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} key(s) {unknown}; valid keys: kind, {', '.join(valid)}")
    return cls(**d)
