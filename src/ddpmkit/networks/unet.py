"""The DDPM / Improved DDPM U-Net, built from a frozen :class:`UNetConfig`.

Layout (Ho et al. 2020, Appendix B; the same layout as the original TF code, diffusers'
``UNet2DModel`` for google/ddpm-cifar10-32 and improved-diffusion's ``UNetModel``)::

    conv_in (3x3, ch)
    for each level i (resolution image_size / 2**i, channels ch * ch_mult[i]):
        num_res_blocks x [ResBlock (+ AttentionBlock if the resolution is in attn_resolutions)]
        Downsample (all levels but the last)
    mid: ResBlock, AttentionBlock, ResBlock
    for each level in reverse:
        (num_res_blocks + 1) x [concat(skip) -> ResBlock (+ AttentionBlock)]
        Upsample (all levels but the first)
    GroupNorm -> SiLU -> conv_out (3x3; 2x channels when the variance is learned)

The skip stack holds the output of ``conv_in``, of every down ResBlock (after its attention) and of
every Downsample, and the up path pops it in reverse order.

Call: ``UNet(config)(x, t, y=None)`` with ``x`` of shape ``(B, C, H, W)`` in ``[-1, 1]``, ``t`` the
integer (or float) time index of shape ``(B,)`` (or a scalar) and ``y`` optional class labels. The
network knows nothing about noise schedules.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ._presets import lookup_preset
from .layers import (
    DOWNSAMPLE_MODES,
    AttentionBlock,
    Downsample,
    GroupNorm,
    ResBlock,
    TimeMLP,
    Upsample,
    timestep_embedding,
)

__all__ = ["UNetConfig", "UNet", "PRESETS", "unet_preset"]


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a :class:`UNet`. All fields are plain values, so it serialises to a dict/TOML.

    Attributes:
        in_channels: image channels (3 for CIFAR-10, 1 for Fashion-MNIST / digits).
        image_size: nominal input size; fixes which level each attention resolution refers to. Any
            ``H, W`` divisible by ``2 ** (len(ch_mult) - 1)`` is accepted at call time.
        ch: base channel count; level ``i`` has ``ch * ch_mult[i]`` channels. Time embedding is ``4 * ch``.
        ch_mult: channel multiplier per resolution level.
        num_res_blocks: ResBlocks per level on the down path (the up path has one more).
        attn_resolutions: resolutions (at ``image_size``) where self-attention follows each ResBlock.
            The middle block always has attention.
        dropout: dropout rate inside ResBlocks (before the second convolution).
        num_heads: attention heads (ignored when ``head_channels`` is set).
        head_channels: if set, heads = channels // head_channels at each attention block.
        scale_shift_norm: Improved DDPM's ``GN(h) * (1 + scale) + shift`` time conditioning.
        learn_sigma: output ``2 * in_channels`` channels (the prediction and the variance channels:
            the interpolation ``v`` for learned_range, the log-variance for learned).
        num_classes: ``None`` (unconditional) or ``K``; the label table then has ``K + 1`` rows, row ``K``
            being the "null" label used for classifier-free guidance (``y=None`` means null).
        norm_groups / norm_eps: GroupNorm settings (TF DDPM used eps 1e-6, PyTorch's default is 1e-5).
        flip_sin_to_cos / freq_shift: timestep-embedding convention (see ``timestep_embedding``).
        downsample: ``"conv_asym"`` (DDPM/TF/diffusers), ``"conv"`` (improved-diffusion) or ``"avgpool"``.
        skip_conv3x3: 3x3 instead of 1x1 convolution on ResBlock skips that change channels.
        channels_last: run internally in channels_last memory format (a speed choice only; inputs and
            outputs stay ordinary contiguous tensors; outputs are identical up to float rounding).
    """

    in_channels: int = 3
    image_size: int = 32
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    num_heads: int = 1
    head_channels: int | None = None
    scale_shift_norm: bool = False
    learn_sigma: bool = False
    num_classes: int | None = None
    norm_groups: int = 32
    norm_eps: float = 1e-6
    flip_sin_to_cos: bool = False
    freq_shift: float = 1.0
    downsample: str = "conv_asym"
    skip_conv3x3: bool = False
    channels_last: bool = True

    def __post_init__(self):
        # Accept lists (from TOML / JSON) but store tuples so the config stays hashable.
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(int(r) for r in self.attn_resolutions))
        self.validate()

    @property
    def out_channels(self) -> int:
        return self.in_channels * (2 if self.learn_sigma else 1)

    @property
    def level_resolutions(self) -> tuple[int, ...]:
        return tuple(self.image_size // 2**i for i in range(len(self.ch_mult)))

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this (one halving per level but the last)."""
        return 2 ** (len(self.ch_mult) - 1)

    def validate(self) -> None:
        def bad(msg: str):
            raise ValueError(f"UNetConfig: {msg}")

        if self.in_channels < 1 or self.ch < 1 or self.num_res_blocks < 1:
            bad("in_channels, ch and num_res_blocks must be positive")
        if not self.ch_mult or any(m < 1 for m in self.ch_mult):
            bad(f"ch_mult must be a non-empty sequence of positive ints, got {self.ch_mult}")
        if self.image_size % self.size_multiple:
            bad(_size_message(self.image_size, self.size_multiple, len(self.ch_mult)))
        for res in self.attn_resolutions:
            if res not in self.level_resolutions:
                bad(
                    f"attention resolution {res} is not a level resolution of a {self.image_size}x"
                    f"{self.image_size} input; valid: {list(self.level_resolutions)}"
                )
        for mult in self.ch_mult:
            c = self.ch * mult
            if c % self.norm_groups:
                bad(f"channels {c} (ch * {mult}) are not divisible by norm_groups={self.norm_groups}")
            if self.head_channels is None and c % self.num_heads:
                bad(f"channels {c} are not divisible by num_heads={self.num_heads}")
            if self.head_channels is not None and c % self.head_channels:
                bad(f"channels {c} are not divisible by head_channels={self.head_channels}")
        if self.downsample not in DOWNSAMPLE_MODES:
            bad(f"unknown downsample {self.downsample!r}; valid: {', '.join(DOWNSAMPLE_MODES)}")
        if self.num_classes is not None and self.num_classes < 1:
            bad(f"num_classes must be None or a positive int, got {self.num_classes}")
        if not 0.0 <= self.dropout < 1.0:
            bad(f"dropout must be in [0, 1), got {self.dropout}")

    def heads_for(self, channels: int) -> int:
        return channels // self.head_channels if self.head_channels else self.num_heads


def _size_message(size: int, multiple: int, levels: int) -> str:
    ok = [s for s in range(multiple, 8 * multiple + 1, multiple)]
    return (
        f"size {size} is not divisible by {multiple} = 2**({levels}-1) required by a {levels}-level U-Net; "
        f"sizes that work: multiples of {multiple}, e.g. {', '.join(map(str, ok))}"
    )


# ----------------------------------------------------------------------------------------------------
# Presets
# ----------------------------------------------------------------------------------------------------

# improved-diffusion's UNetModel as Nichol & Dhariwal 2021 train it (3 blocks, attention at 16 and 8 with
# 4 heads, scale-shift norm, learned variance, its time-embedding and downsampling conventions)
_IMPROVED_DDPM = dict(
    num_res_blocks=3,
    attn_resolutions=(16, 8),
    num_heads=4,
    scale_shift_norm=True,
    learn_sigma=True,
    norm_eps=1e-5,
    flip_sin_to_cos=True,
    freq_shift=0.0,
    downsample="conv",
)

PRESETS: dict[str, UNetConfig] = {
    # Ho et al. 2020, Appendix B: 35,746,307 parameters (= google/ddpm-cifar10-32).
    "ddpm-cifar10": UNetConfig(),
    # Nichol & Dhariwal 2021, CIFAR-10 model (L_hybrid, cosine schedule): 52,546,438 parameters.
    "iddpm-cifar10": UNetConfig(**_IMPROVED_DDPM, dropout=0.3),
    # Ho et al. 2020, Appendix B, the 256x256 CelebA-HQ and LSUN (church, bedroom, cat) model: ch 128,
    # multipliers (1, 1, 2, 2, 4, 4), attention at 16x16, 2 blocks per level; 113,673,219 parameters (the
    # paper: "114M"), the layout of google/ddpm-celebahq-256 / ddpm-church-256 / ddpm-bedroom-256.
    "ddpm-256": UNetConfig(image_size=256, ch_mult=(1, 1, 2, 2, 4, 4), attn_resolutions=(16,), dropout=0.0),
    # Nichol & Dhariwal 2021, unconditional ImageNet 64x64 (improved-diffusion's README: num_channels 128,
    # num_res_blocks 3, learn_sigma; its defaults: channel_mult (1, 2, 3, 4) at 64, attention at 16 and 8,
    # 4 heads, scale-shift norm, dropout 0): 121,063,942 parameters (the checkpoint is named "100M").
    "iddpm-imagenet64": UNetConfig(**_IMPROVED_DDPM, image_size=64, ch_mult=(1, 2, 3, 4), dropout=0.0),
    # A small U-Net for any image folder from 32x32 to 256x256 (five levels: attention at 16x16 exists at
    # every size 32 * 2**k up to 256), 4,591,907 parameters at 64x64 RGB; sized for trying a folder on a CPU.
    "folder-small": UNetConfig(
        image_size=64,
        ch=32,
        ch_mult=(1, 2, 2, 4, 4),
        num_res_blocks=1,
        attn_resolutions=(16,),
        dropout=0.1,
        num_heads=4,
        norm_groups=8,
    ),
    # Fashion-MNIST at native 28x28 (28 -> 14 -> 7; 32x32 also works: 32 -> 16 -> 8), 3,939,393 params.
    # Channels 32/64/128: every level costs about the same FLOPs per conv, so the capacity sits at the
    # cheap low resolutions; ~0.8 GFLOP per forward, sized for ~1 h of training on 2 CPU cores.
    "fashion-mnist": UNetConfig(
        in_channels=1,
        image_size=28,
        ch=32,
        ch_mult=(1, 2, 4),
        num_res_blocks=2,
        attn_resolutions=(7,),
        dropout=0.1,
        num_heads=4,
        norm_groups=8,
    ),
    # scikit-learn digits, 1x8x8 (8 -> 4), 701,345 params; one ResBlock per level keeps a training step
    # short (these tiny convolutions are dominated by per-op overhead, not FLOPs).
    "digits": UNetConfig(
        in_channels=1,
        image_size=8,
        ch=32,
        ch_mult=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(4,),
        dropout=0.0,
        num_heads=2,
        norm_groups=8,
    ),
}


def unet_preset(name: str, **overrides) -> UNetConfig:
    """The named preset, with optional field overrides (e.g. ``num_classes=10``)."""
    return lookup_preset("U-Net", PRESETS, name, overrides)


# ----------------------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------------------


class Level(nn.Module):
    """One resolution level: ResBlocks, optional attention after each, then Downsample/Upsample/None."""

    def __init__(self, resnets: list[ResBlock], attentions: list[nn.Module], resample: nn.Module | None):
        super().__init__()
        self.res = nn.ModuleList(resnets)
        self.attn = nn.ModuleList(attentions)  # empty, or one per ResBlock
        self.resample = resample


class MidBlock(nn.Module):
    def __init__(self, res1: ResBlock, attn: AttentionBlock, res2: ResBlock):
        super().__init__()
        self.res1, self.attn, self.res2 = res1, attn, res2

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return self.res2(self.attn(self.res1(h, temb)), temb)


class UNet(nn.Module):
    """The DDPM U-Net. ``forward(x, t, y=None) -> (B, out_channels, H, W)``."""

    def __init__(self, config: UNetConfig | None = None):
        super().__init__()
        cfg = config if config is not None else UNetConfig()
        self.config = cfg
        temb_dim = 4 * cfg.ch

        def res(i: int, o: int) -> ResBlock:
            return ResBlock(
                i,
                o,
                temb_dim,
                dropout=cfg.dropout,
                scale_shift_norm=cfg.scale_shift_norm,
                norm_groups=cfg.norm_groups,
                norm_eps=cfg.norm_eps,
                skip_conv3x3=cfg.skip_conv3x3,
            )

        def attn(c: int) -> AttentionBlock:
            return AttentionBlock(c, num_heads=cfg.heads_for(c), norm_groups=cfg.norm_groups, norm_eps=cfg.norm_eps)

        self.time_mlp = TimeMLP(cfg.ch, temb_dim)
        self.label_emb = nn.Embedding(cfg.num_classes + 1, temb_dim) if cfg.num_classes is not None else None
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)

        levels = len(cfg.ch_mult)
        chans = [cfg.ch * m for m in cfg.ch_mult]
        has_attn = [r in cfg.attn_resolutions for r in cfg.level_resolutions]

        skip_chans = [cfg.ch]
        cur = cfg.ch
        self.down = nn.ModuleList()
        for i in range(levels):
            resnets, attns = [], []
            for _ in range(cfg.num_res_blocks):
                resnets.append(res(cur, chans[i]))
                cur = chans[i]
                if has_attn[i]:
                    attns.append(attn(cur))
                skip_chans.append(cur)
            down = Downsample(cur, cfg.downsample) if i < levels - 1 else None
            if down is not None:
                skip_chans.append(cur)
            self.down.append(Level(resnets, attns, down))

        self.mid = MidBlock(res(cur, cur), attn(cur), res(cur, cur))

        self.up = nn.ModuleList()
        for i in reversed(range(levels)):
            resnets, attns = [], []
            for _ in range(cfg.num_res_blocks + 1):
                resnets.append(res(cur + skip_chans.pop(), chans[i]))
                cur = chans[i]
                if has_attn[i]:
                    attns.append(attn(cur))
            self.up.append(Level(resnets, attns, Upsample(cur) if i > 0 else None))
        assert not skip_chans

        self.norm_out = GroupNorm(cfg.norm_groups, cur, eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(cur, cfg.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        self.channels_last = False
        self.set_channels_last(cfg.channels_last)

    def set_channels_last(self, on: bool) -> None:
        """Run the forward (and lay out the convolution weights) in channels_last (True) or NCHW (False).

        A speed choice only: the function is the same up to float rounding. ``config.channels_last``
        is the layout a new network starts with; :func:`ddpmkit.networks.precision.layout_for` switches
        it where a precision runs faster in the other one. The weights move with the input: otherwise
        oneDNN re-lays out every weight on every call and copies every weight gradient back (measured:
        ~3 % of a CIFAR-10 training step), and a channels_last weight alone makes oneDNN compute in
        channels_last. state_dict() tensors may then be channels_last-strided views; save them with
        .contiguous(). Call it before an optimizer is built on the parameters.
        """
        on = bool(on)
        if on != self.channels_last:
            self.to(memory_format=torch.channels_last if on else torch.contiguous_format)
            self.channels_last = on

    # ------------------------------------------------------------------------------------------------
    @property
    def null_label(self) -> int | None:
        """Index of the "null" (unconditional) label, or ``None`` for an unconditional network."""
        return self.config.num_classes

    def _check_inputs(self, x: torch.Tensor, t, y) -> tuple[torch.Tensor, torch.Tensor | None]:
        cfg = self.config
        if x.ndim != 4:
            raise ValueError(f"x must have shape (B, C, H, W), got {tuple(x.shape)}")
        b, c, h, w = x.shape
        if c != cfg.in_channels:
            raise ValueError(f"x has {c} channels but this U-Net expects in_channels={cfg.in_channels}")
        for name, s in (("height", h), ("width", w)):
            if s % cfg.size_multiple or s == 0:
                raise ValueError(f"input {name} {s}: " + _size_message(s, cfg.size_multiple, len(cfg.ch_mult)))
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(b)
        if t.shape != (b,):
            raise ValueError(f"t must be a scalar or have shape ({b},), got {tuple(t.shape)}")
        if t.dtype == torch.bool or t.is_complex():
            raise ValueError(f"t must be an integer or float tensor, got dtype {t.dtype}")
        if cfg.num_classes is None:
            if y is not None:
                raise ValueError("y was given but this U-Net is unconditional (num_classes=None)")
            return t, None
        if y is None:
            return t, torch.full((b,), cfg.num_classes, dtype=torch.long, device=x.device)
        y = torch.as_tensor(y, device=x.device)
        if y.dtype.is_floating_point or y.dtype == torch.bool or y.shape != (b,):
            raise ValueError(f"y must be integer labels of shape ({b},), got dtype {y.dtype}, shape {tuple(y.shape)}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) > cfg.num_classes):
            raise ValueError(
                f"labels must be in 0..{cfg.num_classes - 1} (or {cfg.num_classes} for the null label), "
                f"got values in {int(y.min())}..{int(y.max())}"
            )
        return t, y.long()

    def time_embedding(self, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """``SiLU(time_mlp(sinusoid(t)) [+ label_emb(y)])`` -- the vector every ResBlock projects."""
        cfg = self.config
        emb = timestep_embedding(t, cfg.ch, flip_sin_to_cos=cfg.flip_sin_to_cos, freq_shift=cfg.freq_shift)
        emb = self.time_mlp(emb.to(self.conv_in.weight.dtype))
        if self.label_emb is not None and y is not None:
            emb = emb + self.label_emb(y)
        return F.silu(emb)

    def forward(self, x: torch.Tensor, t, y: torch.Tensor | None = None) -> torch.Tensor:
        t, y = self._check_inputs(x, t, y)
        temb = self.time_embedding(t, y)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)

        h = self.conv_in(x)
        skips = [h]
        for level in self.down:
            for j, block in enumerate(level.res):
                h = block(h, temb)
                if len(level.attn):
                    h = level.attn[j](h)
                skips.append(h)
            if level.resample is not None:
                h = level.resample(h)
                skips.append(h)

        h = self.mid(h, temb)

        for level in self.up:
            for j, block in enumerate(level.res):
                h = block(torch.cat([h, skips.pop()], dim=1), temb)
                if len(level.attn):
                    h = level.attn[j](h)
            if level.resample is not None:
                h = level.resample(h)

        h = self.conv_out(F.silu(self.norm_out(h)))
        return h.contiguous()
