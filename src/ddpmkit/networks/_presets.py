"""Named presets with field overrides, shared by the U-Net and the MLP (and the factory)."""

from __future__ import annotations

import dataclasses
from typing import Any


def replace_fields(config, overrides: dict[str, Any]):
    """``dataclasses.replace`` that names the valid fields when an override is unknown."""
    if not overrides:
        return config
    valid = [f.name for f in dataclasses.fields(config)]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(f"unknown {type(config).__name__} field(s) {unknown}; "
                         f"valid fields: {', '.join(sorted(valid))}")
    return dataclasses.replace(config, **overrides)


def lookup_preset(what: str, presets: dict, name: str, overrides: dict[str, Any]):
    """``presets[name]`` with ``overrides`` applied; an unknown name lists the valid presets."""
    if name not in presets:
        raise ValueError(f"unknown {what} preset {name!r}; valid presets: {', '.join(sorted(presets))}")
    return replace_fields(presets[name], overrides)
