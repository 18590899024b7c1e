"""Read and write diffusers ``UNet2DModel`` checkpoints in the DDPM layout -- without importing diffusers.

The DDPM layout is the one of google/ddpm-cifar10-32: ``DownBlock2D`` / ``AttnDownBlock2D`` down blocks,
``UpBlock2D`` / ``AttnUpBlock2D`` up blocks, a ``UNetMidBlock2D`` with attention, SiLU, positional time
embedding. A checkpoint directory holds ``config.json`` and ``diffusion_pytorch_model.safetensors`` (or
the older ``diffusion_pytorch_model.bin``, read with ``torch.load(weights_only=True)`` only).

    net = load_diffusers_unet("path/to/ddpm-cifar10-32/unet")    # -> UNet (ddpm-cifar10 layout)
    save_diffusers_unet(net, "out/unet")                         # diffusers can load this directory

Key names of both attention generations are read: ``to_q/to_k/to_v/to_out.0`` and the pre-0.14
``query/key/value/proj_attn`` used by the checkpoints on the Hub. Our single ``qkv`` dense layer is the
concatenation ``[to_q; to_k; to_v]``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .unet import UNet, UNetConfig

__all__ = [
    "load_diffusers_unet",
    "save_diffusers_unet",
    "diffusers_config_to_unet_config",
    "unet_config_to_diffusers",
]

WEIGHTS_SAFETENSORS = "diffusion_pytorch_model.safetensors"
WEIGHTS_BIN = "diffusion_pytorch_model.bin"
CONFIG_NAME = "config.json"

# Our ResBlock parameter names -> diffusers ResnetBlock2D names.
_RES_NAMES = {
    "norm1": "norm1",
    "conv1": "conv1",
    "temb_proj": "time_emb_proj",
    "norm2": "norm2",
    "conv2": "conv2",
    "skip": "conv_shortcut",
}
_DOWNSAMPLE_PADDING = {"conv_asym": 0, "conv": 1}


# ----------------------------------------------------------------------------------------------------
# Config translation
# ----------------------------------------------------------------------------------------------------


def diffusers_config_to_unet_config(dcfg: dict[str, Any], **overrides) -> UNetConfig:
    """Translate a diffusers ``UNet2DModel`` config dict in the DDPM layout to a :class:`UNetConfig`.

    Raises ``ValueError`` naming the first setting that has no equivalent here.
    """

    def need(key: str, allowed, default=None):
        value = dcfg.get(key, default)
        if value not in allowed:
            raise ValueError(f"diffusers config {key}={value!r} is not supported; supported: {allowed}")
        return value

    if dcfg.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise ValueError(f"expected a UNet2DModel config, got _class_name={dcfg.get('_class_name')!r}")
    need("act_fn", ["silu", "swish"], "silu")
    need("time_embedding_type", ["positional"], "positional")
    need("center_input_sample", [False], False)
    need("mid_block_type", ["UNetMidBlock2D"], "UNetMidBlock2D")
    need("add_attention", [True], True)
    need("mid_block_scale_factor", [1, 1.0], 1)
    need("downsample_type", ["conv"], "conv")
    need("upsample_type", ["conv"], "conv")
    need("class_embed_type", [None], None)
    shift = need("resnet_time_scale_shift", ["default", "scale_shift"], "default")
    pad = need("downsample_padding", [0, 1], 1)

    chans = list(dcfg["block_out_channels"])
    base = chans[0]
    if any(c % base for c in chans):
        raise ValueError(f"block_out_channels {chans} are not multiples of the first entry {base}")
    if dcfg.get("time_embedding_dim") not in (None, 4 * base):
        raise ValueError(f"time_embedding_dim must be 4 * block_out_channels[0] = {4 * base}")
    groups = dcfg.get("norm_num_groups", 32)
    attn_groups = dcfg.get("attn_norm_num_groups")
    if attn_groups not in (None, groups):
        raise ValueError("attn_norm_num_groups different from norm_num_groups is not supported")
    if attn_groups is None and shift != "default":
        raise ValueError(
            "with resnet_time_scale_shift='scale_shift' and attn_norm_num_groups=None, diffusers' middle "
            "attention has no GroupNorm, which this U-Net always has; "
            "set attn_norm_num_groups=norm_num_groups"
        )

    down = list(dcfg["down_block_types"])
    up = list(dcfg["up_block_types"])
    allowed_down, allowed_up = ("DownBlock2D", "AttnDownBlock2D"), ("UpBlock2D", "AttnUpBlock2D")
    if any(b not in allowed_down for b in down) or any(b not in allowed_up for b in up):
        raise ValueError(f"only {allowed_down} / {allowed_up} blocks are supported, got {down} / {up}")
    attn_levels = [b == "AttnDownBlock2D" for b in down]
    if attn_levels != [b == "AttnUpBlock2D" for b in reversed(up)]:
        raise ValueError(f"attention must sit at the same levels on the way down and up: {down} vs {up}")

    size = dcfg.get("sample_size") or 32
    if isinstance(size, list | tuple):
        if len(set(size)) != 1:
            raise ValueError(f"only square sample_size is supported, got {size}")
        size = size[0]
    in_ch, out_ch = dcfg.get("in_channels", 3), dcfg.get("out_channels", 3)
    if out_ch not in (in_ch, 2 * in_ch):
        raise ValueError(f"out_channels={out_ch} must be in_channels ({in_ch}) or twice that (learned variance)")
    n_cls = dcfg.get("num_class_embeds")

    head_dim, num_heads = dcfg.get("attention_head_dim"), 1
    attn_chans = {c for c, a in zip(chans, attn_levels, strict=True) if a} | {chans[-1]}
    if head_dim is not None and len(attn_chans) == 1:  # same heads everywhere: say it as num_heads
        num_heads, head_dim = attn_chans.pop() // head_dim, None

    fields = dict(
        in_channels=in_ch,
        image_size=int(size),
        ch=base,
        ch_mult=tuple(c // base for c in chans),
        num_res_blocks=dcfg.get("layers_per_block", 2),
        attn_resolutions=tuple(int(size) // 2**i for i, a in enumerate(attn_levels) if a),
        dropout=float(dcfg.get("dropout", 0.0)),
        num_heads=num_heads,
        head_channels=head_dim,
        scale_shift_norm=shift == "scale_shift",
        learn_sigma=out_ch == 2 * in_ch,
        num_classes=None if n_cls is None else n_cls - 1,
        norm_groups=groups,
        norm_eps=float(dcfg.get("norm_eps", 1e-5)),
        flip_sin_to_cos=bool(dcfg.get("flip_sin_to_cos", True)),
        freq_shift=float(dcfg.get("freq_shift", 0)),
        downsample="conv_asym" if pad == 0 else "conv",
    )
    fields.update(overrides)
    return UNetConfig(**fields)


def unet_config_to_diffusers(cfg: UNetConfig) -> dict[str, Any]:
    """The diffusers ``UNet2DModel`` config dict equivalent to ``cfg`` (inverse of the above)."""
    if cfg.downsample not in _DOWNSAMPLE_PADDING:
        raise ValueError(f"downsample={cfg.downsample!r} has no diffusers DDPM-layout equivalent")
    if cfg.skip_conv3x3:
        raise ValueError("skip_conv3x3=True has no diffusers equivalent (ResnetBlock2D uses a 1x1 shortcut)")
    levels = len(cfg.ch_mult)
    attn = [r in cfg.attn_resolutions for r in cfg.level_resolutions]
    head_dim = _diffusers_head_dim(cfg)
    return {
        "_class_name": "UNet2DModel",
        "_diffusers_version": "0.25.0",
        "act_fn": "silu",
        "attention_head_dim": head_dim,
        # diffusers drops the middle attention's GroupNorm under scale_shift unless this is set.
        "attn_norm_num_groups": cfg.norm_groups if cfg.scale_shift_norm else None,
        "block_out_channels": [cfg.ch * m for m in cfg.ch_mult],
        "center_input_sample": False,
        "class_embed_type": None,
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "downsample_padding": _DOWNSAMPLE_PADDING[cfg.downsample],
        "downsample_type": "conv",
        "dropout": cfg.dropout,
        "flip_sin_to_cos": cfg.flip_sin_to_cos,
        "freq_shift": cfg.freq_shift,
        "in_channels": cfg.in_channels,
        "layers_per_block": cfg.num_res_blocks,
        "mid_block_scale_factor": 1,
        "norm_eps": cfg.norm_eps,
        "norm_num_groups": cfg.norm_groups,
        "num_class_embeds": None if cfg.num_classes is None else cfg.num_classes + 1,
        "out_channels": cfg.out_channels,
        "resnet_time_scale_shift": "scale_shift" if cfg.scale_shift_norm else "default",
        "sample_size": cfg.image_size,
        "time_embedding_type": "positional",
        "up_block_types": ["AttnUpBlock2D" if attn[i] else "UpBlock2D" for i in reversed(range(levels))],
        "upsample_type": "conv",
    }


def _diffusers_head_dim(cfg: UNetConfig) -> int | None:
    """diffusers has one ``attention_head_dim`` for all blocks (``None`` = one head everywhere)."""
    if cfg.head_channels is not None:
        return cfg.head_channels
    if cfg.num_heads == 1:
        return None
    attn_chans = {
        cfg.ch * m for m, r in zip(cfg.ch_mult, cfg.level_resolutions, strict=True) if r in cfg.attn_resolutions
    }
    attn_chans.add(cfg.ch * cfg.ch_mult[-1])  # middle block
    dims = {c // cfg.num_heads for c in attn_chans}
    if len(dims) != 1:
        raise ValueError(
            f"num_heads={cfg.num_heads} on attention blocks of {sorted(attn_chans)} channels gives different "
            "head sizes; diffusers needs one attention_head_dim (set head_channels instead)"
        )
    return dims.pop()


# ----------------------------------------------------------------------------------------------------
# Key mapping
# ----------------------------------------------------------------------------------------------------


def _module_map(cfg: UNetConfig) -> list[tuple[str, str, str]]:
    """(our module prefix, diffusers module prefix, kind) for every module with parameters."""
    levels = len(cfg.ch_mult)
    attn = [r in cfg.attn_resolutions for r in cfg.level_resolutions]
    m: list[tuple[str, str, str]] = [
        ("time_mlp.linear_1", "time_embedding.linear_1", "plain"),
        ("time_mlp.linear_2", "time_embedding.linear_2", "plain"),
        ("conv_in", "conv_in", "plain"),
        ("norm_out", "conv_norm_out", "plain"),
        ("conv_out", "conv_out", "plain"),
        ("mid.res1", "mid_block.resnets.0", "res"),
        ("mid.attn", "mid_block.attentions.0", "attn"),
        ("mid.res2", "mid_block.resnets.1", "res"),
    ]
    if cfg.num_classes is not None:
        m.append(("label_emb", "class_embedding", "plain"))
    for i in range(levels):
        for j in range(cfg.num_res_blocks):
            m.append((f"down.{i}.res.{j}", f"down_blocks.{i}.resnets.{j}", "res"))
            if attn[i]:
                m.append((f"down.{i}.attn.{j}", f"down_blocks.{i}.attentions.{j}", "attn"))
        if i < levels - 1:
            m.append((f"down.{i}.resample.conv", f"down_blocks.{i}.downsamplers.0.conv", "plain"))
    for k, i in enumerate(reversed(range(levels))):
        for j in range(cfg.num_res_blocks + 1):
            m.append((f"up.{k}.res.{j}", f"up_blocks.{k}.resnets.{j}", "res"))
            if attn[i]:
                m.append((f"up.{k}.attn.{j}", f"up_blocks.{k}.attentions.{j}", "attn"))
        if i > 0:
            m.append((f"up.{k}.resample.conv", f"up_blocks.{k}.upsamplers.0.conv", "plain"))
    return m


def _pop(sd: dict[str, torch.Tensor], *names: str) -> torch.Tensor:
    for n in names:
        if n in sd:
            return sd.pop(n)
    raise KeyError(f"diffusers checkpoint lacks {' / '.join(names)}")


def diffusers_state_to_ours(sd: dict[str, torch.Tensor], cfg: UNetConfig) -> dict[str, torch.Tensor]:
    """Map a diffusers state dict (DDPM layout) to our :class:`UNet` key names; strict both ways."""
    sd = dict(sd)
    for k in [k for k in sd if ".downsamplers.0.Conv2d_0." in k]:  # alias of ".conv." in old diffusers
        alias = k.replace(".Conv2d_0.", ".conv.")
        sd.setdefault(alias, sd[k])
        del sd[k]
    out: dict[str, torch.Tensor] = {}
    for ours, theirs, kind in _module_map(cfg):
        for p in ("weight", "bias"):
            if kind == "plain":  # missing tensors are reported by the caller against the network
                if f"{theirs}.{p}" in sd:
                    out[f"{ours}.{p}"] = sd.pop(f"{theirs}.{p}")
            elif kind == "res":
                for a, b in _RES_NAMES.items():
                    if a == "skip" and f"{theirs}.{b}.{p}" not in sd:
                        continue  # identity skip
                    out[f"{ours}.{a}.{p}"] = _pop(sd, f"{theirs}.{b}.{p}")
            else:  # attention
                out[f"{ours}.norm.{p}"] = _pop(sd, f"{theirs}.group_norm.{p}")
                q, k, v = (
                    _pop(sd, f"{theirs}.to_{n}.{p}", f"{theirs}.{old}.{p}")
                    for n, old in (("q", "query"), ("k", "key"), ("v", "value"))
                )
                out[f"{ours}.qkv.{p}"] = torch.cat([q, k, v], dim=0)
                out[f"{ours}.proj.{p}"] = _pop(sd, f"{theirs}.to_out.0.{p}", f"{theirs}.proj_attn.{p}")
    if sd:
        raise ValueError(f"diffusers checkpoint has {len(sd)} unexpected key(s), e.g. {sorted(sd)[:5]}")
    return out


def ours_state_to_diffusers(sd: dict[str, torch.Tensor], cfg: UNetConfig) -> dict[str, torch.Tensor]:
    """Inverse of :func:`diffusers_state_to_ours` (writes the current ``to_q/to_k/to_v`` names)."""
    sd = dict(sd)
    out: dict[str, torch.Tensor] = {}
    for ours, theirs, kind in _module_map(cfg):
        for p in ("weight", "bias"):
            if kind == "plain":
                if f"{ours}.{p}" in sd:
                    out[f"{theirs}.{p}"] = sd.pop(f"{ours}.{p}")
            elif kind == "res":
                for a, b in _RES_NAMES.items():
                    if f"{ours}.{a}.{p}" in sd:
                        out[f"{theirs}.{b}.{p}"] = sd.pop(f"{ours}.{a}.{p}")
            else:
                out[f"{theirs}.group_norm.{p}"] = sd.pop(f"{ours}.norm.{p}")
                q, k, v = sd.pop(f"{ours}.qkv.{p}").chunk(3, dim=0)
                out[f"{theirs}.to_q.{p}"], out[f"{theirs}.to_k.{p}"], out[f"{theirs}.to_v.{p}"] = q, k, v
                out[f"{theirs}.to_out.0.{p}"] = sd.pop(f"{ours}.proj.{p}")
    if sd:
        raise ValueError(f"internal error: unmapped keys {sorted(sd)[:5]}")
    return {k: v.contiguous() for k, v in out.items()}


# ----------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if (path / WEIGHTS_SAFETENSORS).exists():
        from safetensors.torch import load_file

        return load_file(str(path / WEIGHTS_SAFETENSORS))
    if (path / WEIGHTS_BIN).exists():
        return torch.load(path / WEIGHTS_BIN, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{path} holds neither {WEIGHTS_SAFETENSORS} nor {WEIGHTS_BIN}")


def load_diffusers_unet(path: str | os.PathLike, **overrides) -> UNet:
    """Build a :class:`UNet` from a diffusers ``UNet2DModel`` directory in the DDPM layout.

    ``path`` is the directory with ``config.json`` (a pipeline's ``unet/`` sub-folder is found too).
    ``overrides`` change non-architectural fields, e.g. ``dropout=0.1`` for fine-tuning (the google
    configs carry no dropout) or ``channels_last=False``.
    """
    path = Path(path)
    if not (path / CONFIG_NAME).exists() and (path / "unet" / CONFIG_NAME).exists():
        path = path / "unet"
    with open(path / CONFIG_NAME) as f:
        dcfg = json.load(f)
    cfg = diffusers_config_to_unet_config(dcfg, **overrides)
    net = UNet(cfg)
    state = diffusers_state_to_ours(_read_weights(path), cfg)
    ours = net.state_dict()
    missing = sorted(set(ours) - set(state))
    if missing:
        raise ValueError(f"diffusers checkpoint is missing {len(missing)} tensor(s), e.g. {missing[:5]}")
    for k, v in state.items():
        if v.shape != ours[k].shape:
            raise ValueError(f"shape mismatch for {k}: checkpoint {tuple(v.shape)} vs network {tuple(ours[k].shape)}")
    net.load_state_dict({k: v.to(ours[k].dtype) for k, v in state.items()}, strict=True)
    return net


def save_diffusers_unet(net: UNet, path: str | os.PathLike) -> Path:
    """Write ``net`` as a diffusers ``UNet2DModel`` directory (``config.json`` + safetensors)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    dcfg = unet_config_to_diffusers(net.config)
    state = ours_state_to_diffusers({k: v.detach().cpu() for k, v in net.state_dict().items()}, net.config)
    save_file(state, str(path / WEIGHTS_SAFETENSORS), metadata={"format": "pt"})
    with open(path / CONFIG_NAME, "w") as f:
        json.dump(dcfg, f, indent=2)
    return path
