"""Building blocks of the DDPM / Improved DDPM U-Net.

Paper mapping (Ho et al. 2020, Appendix B; Nichol & Dhariwal 2021, Section 3/Appendix A):

* :func:`timestep_embedding` - the Transformer sinusoidal position embedding of the time index ``t``.
  DDPM (and diffusers' google/ddpm-cifar10-32) writes ``[sin, cos]`` with frequencies
  ``exp(-log(10000) * i / (half - 1))``; improved-diffusion writes ``[cos, sin]`` with ``/ half``.
  Both are the same function with two switches (``flip_sin_to_cos``, ``freq_shift``).
* :class:`TimeMLP` - the two dense layers that lift the embedding to ``4 * ch``.
* :class:`ResBlock` - the Wide-ResNet block with GroupNorm, the time embedding added after the first
  convolution (DDPM) or applied as a scale and shift of the second GroupNorm (Improved DDPM's
  "scale-shift norm", ``GN(h) * (1 + s) + b``).
* :class:`AttentionBlock` - the PixelCNN++-style self-attention at chosen resolutions.
* :class:`Downsample` / :class:`Upsample` - stride-2 convolution (or average pooling) and
  nearest-neighbour doubling followed by a 3x3 convolution (computed as one transposed convolution,
  :func:`nearest_upsample_conv`).
* :class:`Dropout` - dropout whose CPU masks come from 15-bit random integers (torch's per-element
  Bernoulli draws cost more than the rest of a ResBlock's element-wise work on CPU).
* :class:`GroupNorm` - ``nn.GroupNorm`` with a faster CPU path for narrow channels_last inputs.
* :class:`MatmulGradConv2d` - ``nn.Conv2d`` whose wide 3x3 convolutions compute their CPU weight gradient
  as three matrix products (oneDNN's weight-gradient kernel runs well below its forward speed on CPU).

Every block accepts NCHW tensors in either contiguous or ``channels_last`` memory format and keeps the
format it was given (the U-Net runs internally in channels_last on CPU where that is faster).

The four CPU speed paths (Dropout, GroupNorm, MatmulGradConv2d, Upsample) are switched and gated in
one place, :mod:`ddpmkit.networks.cpu_fast`: each layer asks ``cpu_fast.use(path, x)`` and adds only
a rule on one sample's shape, so the choice never depends on the batch size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import cpu_fast

__all__ = [
    "Dropout",
    "GroupNorm",
    "MatmulGradConv2d",
    "conv3x3_weight_grad",
    "timestep_embedding",
    "TimeMLP",
    "ResBlock",
    "AttentionBlock",
    "Downsample",
    "Upsample",
    "nearest_upsample_conv",
    "nearest_upsample_conv_kernel",
    "zero_",
    "DOWNSAMPLE_MODES",
]

DOWNSAMPLE_MODES = ("conv_asym", "conv", "avgpool")


def timestep_embedding(
    t: torch.Tensor,
    dim: int,
    *,
    flip_sin_to_cos: bool = False,
    freq_shift: float = 1.0,
    max_period: float = 10000.0,
) -> torch.Tensor:
    """Sinusoidal embedding of time indices ``t`` (shape ``(B,)``, integer or float) -> ``(B, dim)``.

    ``freqs[i] = exp(-log(max_period) * i / (dim // 2 - freq_shift))`` for ``i < dim // 2``; the output is
    ``[sin(t * freqs), cos(t * freqs)]`` or, with ``flip_sin_to_cos``, ``[cos, sin]``.

    * DDPM / diffusers google/ddpm-cifar10-32: ``flip_sin_to_cos=False, freq_shift=1``.
    * improved-diffusion: ``flip_sin_to_cos=True, freq_shift=0``.

    An odd ``dim`` gets one trailing zero. Always computed in float32.
    """
    if t.ndim != 1:
        raise ValueError(f"timestep_embedding expects t of shape (B,), got shape {tuple(t.shape)}")
    half = dim // 2
    if half - freq_shift <= 0:
        raise ValueError(f"embedding dim {dim} is too small for freq_shift={freq_shift}")
    exponent = torch.arange(half, dtype=torch.float32, device=t.device) * (-math.log(max_period))
    freqs = torch.exp(exponent / (half - freq_shift))
    args = t.to(torch.float32)[:, None] * freqs[None, :]
    parts = (torch.cos(args), torch.sin(args)) if flip_sin_to_cos else (torch.sin(args), torch.cos(args))
    emb = torch.cat(parts, dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def zero_(module: nn.Module) -> nn.Module:
    """Zero all parameters of ``module`` in place (DDPM's ``init_scale=0`` / improved-diffusion's
    ``zero_module``): residual branches start as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class TimeMLP(nn.Module):
    """Dense(ch -> 4ch) -> SiLU -> Dense(4ch -> 4ch), applied to the sinusoidal embedding.

    Every ResBlock then applies SiLU followed by its own dense projection; the shared SiLU is computed
    once by the U-Net (mathematically identical to doing it in every block).
    """

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(emb)))


DROPOUT_BITS = 15  # random_() on int32 fills 31 uniform bits: each 16-bit half carries 15 of them


class Dropout(nn.Module):
    """Inverted dropout: zero each element with probability ``p``, scale the kept ones to keep the mean.

    Where the ``dropout_bits`` CPU path is off or does not apply (CUDA, autocast, ``torch.compile``)
    this is ``F.dropout``.  On that path the mask is drawn from 15-bit uniform
    integers, two per 32-bit random word, which is about 2x faster there than ``F.dropout`` (forward
    and backward): an element is dropped when its integer is below ``round(p * 2**15)``, so the drop
    probability is that count over ``2**15`` (within 1.6e-5 of ``p``; :attr:`effective_p`), and kept
    elements are scaled by ``1 / (1 - effective_p)``, which keeps ``E[output] = input`` exactly.  Masks
    come from torch's default generator, so ``torch.manual_seed`` makes them reproducible.  Identity in
    eval mode and for ``p = 0``.
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = float(p)
        self.threshold = round(self.p * 2**DROPOUT_BITS)
        self.effective_p = self.threshold / 2**DROPOUT_BITS

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def _fast_path(self, x: torch.Tensor) -> bool:
        return cpu_fast.use("dropout_bits", x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if not self._fast_path(x):
            return F.dropout(x, self.p, training=True)
        n = x.numel()
        words = torch.empty((n + 1) // 2, dtype=torch.int32).random_()
        bits = words.view(torch.int16)[:n].bitwise_and_(2**DROPOUT_BITS - 1)
        scale = 1.0 / (1.0 - self.effective_p)
        mask = (bits >= self.threshold).to(x.dtype).mul_(scale)
        # i.i.d. bits need no particular order: lay the mask out in x's own memory order when x is dense
        # (contiguous or channels_last), so the product runs over matching strides
        dense = x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)
        mask = mask.as_strided(x.shape, x.stride()) if dense else mask.view(x.shape)
        return x * mask


def conv3x3_weight_grad(grad_out: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias gradients of a 3x3, stride-1, padding-1 convolution, as three matrix products.

    ``grad_w[o, i, kh, kw] = sum over b, h, w of grad_out[b, o, h, w] * x_pad[b, i, h + kh, w + kw]`` and
    ``grad_b[o] = sum of grad_out[:, o]``.  The sum runs over rows ordered ``(h, b, w)``: with
    ``cols[h', b, w, kw, i] = x_pad[b, i, h', w + kw]`` (x copied three times, shifted by one column each,
    instead of im2col's nine), kernel row ``kh`` is the contiguous row slice ``h' in [kh, kh + H)`` of
    ``cols``, so each kernel row is one product ``cols_slice^T @ grad_out``.  Returns ``grad_w`` with
    shape ``(C_out, C_in, 3, 3)`` (strides of the product's layout; callers choose the memory format).
    """
    b, c_in, hgt, wid = x.shape
    c_out = grad_out.shape[1]
    xp = F.pad(x, (1, 1, 1, 1))
    sb, sc, sh, sw = xp.stride()
    cols = xp.as_strided((hgt + 2, b, wid, 3, c_in), (sh, sb, sw, sw, sc), xp.storage_offset())
    cols = cols.contiguous().view((hgt + 2) * b * wid, 3 * c_in)
    g = grad_out.permute(2, 0, 3, 1).contiguous().view(hgt * b * wid, c_out)
    rows = b * wid  # rows of cols per image row h'
    # cols^T @ g (giving [kh, kw * C_in + i, o], then one copy into the weight's layout) measured 5-15 %
    # faster here than g^T @ cols, which would give the channels_last weight layout directly
    prod = x.new_empty(3, 3 * c_in, c_out)
    for kh in range(3):
        torch.mm(cols[kh * rows : (kh + hgt) * rows].t(), g, out=prod[kh])
    return prod.view(3, 3, c_in, c_out).permute(3, 2, 0, 1), g.sum(0)


class _Conv3x3MatmulGrad(torch.autograd.Function):
    """``F.conv2d(x, w, b, padding=1)`` with oneDNN's input gradient and :func:`conv3x3_weight_grad`."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        return F.conv2d(x, weight, bias, padding=1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_x = grad_w = grad_b = None
        if need_x:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, (1, 1), (1, 1), (1, 1), False, (0, 0), 1, (True, False, False)
            )[0]
        if need_w or need_b:
            grad_w, grad_b = conv3x3_weight_grad(grad_out, x)
            # hand the gradient over in the weight's own layout, so AccumulateGrad keeps it without a copy
            cl = weight.is_contiguous(memory_format=torch.channels_last)
            grad_w = grad_w.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
            grad_w, grad_b = (grad_w if need_w else None), (grad_b if need_b else None)
        return grad_x, grad_w, grad_b


class MatmulGradConv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters, same state dict) with a faster CPU training step for wide 3x3 convs.

    oneDNN computes a 3x3 convolution's input gradient about as fast as its forward pass on CPU, but
    its weight gradient at only ~2/3 of that (measured here: ~52 vs ~80 GFLOP/s at 128-512 channels).
    For 3x3, stride-1, padding-1 convolutions with at least :attr:`MIN_CHANNELS` input and output
    channels, a float32 CPU forward with gradients enabled therefore goes through an autograd function
    whose backward keeps oneDNN's input gradient and computes the weight gradient with
    :func:`conv3x3_weight_grad` (1.15-1.45x faster on the CIFAR-10 U-Net's shapes; no faster at 64
    channels and slower at 32, hence the threshold), when the ``conv_weight_grad`` path is on.
    Everything else - inference, CUDA, other dtypes, autocast,
    ``torch.compile`` - is plain ``nn.Conv2d``.  The backward is not differentiable again (no double
    backward through the fast path).
    """

    MIN_CHANNELS = 128

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.matmul_weight_grad = (
            self.kernel_size == (3, 3)
            and self.stride == (1, 1)
            and self.padding == (1, 1)
            and self.dilation == (1, 1)
            and self.groups == 1
            and self.padding_mode == "zeros"
            and min(self.in_channels, self.out_channels) >= self.MIN_CHANNELS
        )

    def _fast_path(self, x: torch.Tensor) -> bool:
        return (
            self.matmul_weight_grad
            and torch.is_grad_enabled()
            and self.weight.requires_grad
            and x.ndim == 4
            and x.dtype == self.weight.dtype == torch.float32
            and cpu_fast.use("conv_weight_grad", x)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fast_path(x):
            return _Conv3x3MatmulGrad.apply(x, self.weight, self.bias)
        return super().forward(x)


class _GroupNormChannelsLast(torch.autograd.Function):
    """``F.group_norm`` of a channels_last ``(B, C, H, W)`` tensor from per-channel sums.

    Over the ``(B, H*W, C)`` view of channels_last memory, a sum over positions is a sum of contiguous
    rows, which runs at memory speed whatever the number of channels a group.  Forward: group means,
    then the variance from the centred values (two passes, so a large mean costs no accuracy), then
    ``y = (x - mean) * (weight * rstd) + bias``.  Backward, with ``db = sum(dy)`` and ``ds = sum(dy * x)``
    per sample and channel: ``dx = (weight * rstd) * dy + a * x + c`` with per-group ``a``, ``c`` from
    ``db``, ``ds``, ``mean``, ``rstd`` (the NCHW kernel's closed form); ``dweight``, ``dbias`` from the same sums.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, groups, eps):
        b, c, hgt, wid = x.shape
        per = c // groups
        n = hgt * wid * per
        v = x.permute(0, 2, 3, 1).reshape(b, hgt * wid, c)  # a view: x is channels_last
        mean = v.sum(1).view(b, groups, per).sum(2).div_(n)  # (B, G)
        centred = v - mean.repeat_interleave(per, 1).unsqueeze(1)
        var = torch.linalg.vecdot(centred, centred, dim=1).view(b, groups, per).sum(2).div_(n)
        rstd = var.add_(eps).rsqrt_()
        y = torch.addcmul(bias, centred, (weight * rstd.repeat_interleave(per, 1)).unsqueeze(1))
        ctx.save_for_backward(x, mean, rstd, weight)
        ctx.groups = groups
        return y.view(b, hgt, wid, c).permute(0, 3, 1, 2)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        x, mean, rstd, weight = ctx.saved_tensors
        b, c, hgt, wid = x.shape
        groups = ctx.groups
        per = c // groups
        n = hgt * wid * per
        v = x.permute(0, 2, 3, 1).reshape(b, hgt * wid, c)
        gv = grad_y.permute(0, 2, 3, 1).reshape(b, hgt * wid, c)  # copies only if grad_y is not channels_last
        db = gv.sum(1)  # (B, C)
        ds = torch.linalg.vecdot(gv, v, dim=1)  # (B, C)
        mean_c, rstd_c = mean.repeat_interleave(per, 1), rstd.repeat_interleave(per, 1)
        s1 = (weight * db).view(b, groups, per).sum(2)  # (B, G)
        s2 = (weight * ds).view(b, groups, per).sum(2)
        coef_x = (s2 - mean * s1).mul_(rstd.pow(3)).div_(-n)
        const = (rstd * s1).div_(-n).sub_(coef_x * mean)
        per_c = [t.repeat_interleave(per, 1).unsqueeze(1) for t in (coef_x, const)]
        grad_x = torch.addcmul(per_c[1], v, per_c[0]).addcmul_(gv, (weight * rstd_c).unsqueeze(1))
        grad_x = grad_x.view(b, hgt, wid, c).permute(0, 3, 1, 2)
        _, need_w, need_b = ctx.needs_input_grad[:3]
        grad_w = ((ds - mean_c * db) * rstd_c).sum(0) if need_w else None
        grad_b = db.sum(0) if need_b else None
        return grad_x, grad_w, grad_b, None, None


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (same parameters, same state dict) with a faster CPU path for channels_last inputs.

    torch's channels_last GroupNorm kernel is several times slower than its NCHW one when a group's
    channel count is not a multiple of 8 on narrow layers (measured here at 32 channels in 8 groups, 28x28:
    forward 3-6 ms against 0.7 ms NCHW, backward alike), and converting to NCHW and back costs more than
    it saves.  For affine GroupNorms with at most :attr:`MAX_CHANNELS` channels and a group size that is
    not a multiple of 8, float32/float64 channels_last CPU inputs of at least :attr:`MIN_HW` pixels a
    sample go through :class:`_GroupNormChannelsLast` when the ``groupnorm_sums`` path is on (1.2-2.9x
    faster forward + backward at those shapes; 0.3-0.7x at 8 or 16 channels a group, and slower below
    about 5000 positions in a batch, where its dozen small ops cost more than the kernel saves - hence
    the rule, stated per sample so that it cannot depend on the batch size).
    Everything else - NCHW, CUDA, autocast, ``torch.compile`` - is plain ``nn.GroupNorm``.  The fast
    backward is not differentiable again.
    """

    MAX_CHANNELS = 96
    # per sample (height x width), so the choice never depends on the batch size; measured on a whole
    # batch: 0.94x at 4096 positions, 1.2-1.3x at 6272 (28x28 at batch 8)
    MIN_HW = 28 * 28

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        per = self.num_channels // self.num_groups
        self.channels_last_sums = self.affine and per % 8 != 0 and self.num_channels <= self.MAX_CHANNELS

    def _fast_path(self, x: torch.Tensor) -> bool:
        return (
            self.channels_last_sums
            and x.dtype in (torch.float32, torch.float64)
            and x.dtype == self.weight.dtype
            and x.ndim == 4
            and x.shape[2] * x.shape[3] >= self.MIN_HW
            and cpu_fast.use("groupnorm_sums", x)
            and x.is_contiguous(memory_format=torch.channels_last)
            and not x.is_contiguous()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fast_path(x):
            return _GroupNormChannelsLast.apply(x, self.weight, self.bias, self.num_groups, self.eps)
        return super().forward(x)


class ResBlock(nn.Module):
    """Residual block of the DDPM U-Net.

    DDPM (default)::

        h = conv1(SiLU(GN(x))) + Dense(SiLU(temb))
        h = conv2(dropout(SiLU(GN(h))))
        return skip(x) + h

    Improved DDPM's scale-shift norm (``scale_shift_norm=True``): the projection gives ``(s, b)`` and
    the second normalisation becomes ``GN(h) * (1 + s) + b``.

    ``skip`` is the identity when the channel count is unchanged, otherwise a 1x1 convolution (DDPM's
    ``nin_shortcut``) or a 3x3 one (``skip_conv3x3=True``).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        temb_dim: int,
        *,
        dropout: float = 0.0,
        scale_shift_norm: bool = False,
        norm_groups: int = 32,
        norm_eps: float = 1e-6,
        skip_conv3x3: bool = False,
    ):
        super().__init__()
        self.scale_shift_norm = scale_shift_norm
        self.norm1 = GroupNorm(norm_groups, in_ch, eps=norm_eps)
        self.conv1 = MatmulGradConv2d(in_ch, out_ch, 3, padding=1)
        self.temb_proj = nn.Linear(temb_dim, out_ch * (2 if scale_shift_norm else 1))
        self.norm2 = GroupNorm(norm_groups, out_ch, eps=norm_eps)
        self.dropout = Dropout(dropout)
        self.conv2 = zero_(MatmulGradConv2d(out_ch, out_ch, 3, padding=1))
        if in_ch == out_ch:
            self.skip = nn.Identity()
        elif skip_conv3x3:
            self.skip = MatmulGradConv2d(in_ch, out_ch, 3, padding=1)
        else:
            self.skip = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, temb_act: torch.Tensor) -> torch.Tensor:
        """``temb_act`` is ``SiLU(time_mlp(...))`` of shape ``(B, temb_dim)``."""
        h = self.conv1(F.silu(self.norm1(x)))
        e = self.temb_proj(temb_act)[:, :, None, None]
        if self.scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = torch.addcmul(shift, self.norm2(h), 1 + scale)
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over the ``H*W`` positions with ``num_heads`` heads and a residual connection.

    ``x + proj(attention(q, k, v))`` with ``q, k, v`` = a single dense layer applied to ``GN(x)``
    (output channels ordered ``[q | k | v]``, each split into heads contiguously, as in diffusers).
    The 1x1 convolutions of the papers are written as dense layers over a ``(B, H*W, C)`` view, which is
    free when the input is channels_last.
    """

    def __init__(self, ch: int, *, num_heads: int = 1, norm_groups: int = 32, norm_eps: float = 1e-6):
        super().__init__()
        if ch % num_heads:
            raise ValueError(f"attention channels {ch} are not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.norm = GroupNorm(norm_groups, ch, eps=norm_eps)
        self.qkv = nn.Linear(ch, 3 * ch)
        self.proj = zero_(nn.Linear(ch, ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        heads, d = self.num_heads, c // self.num_heads
        h = self.norm(x).permute(0, 2, 3, 1).reshape(b, hgt * wid, c)
        qkv = self.qkv(h).view(b, hgt * wid, 3, heads, d).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, heads, HW, d)
        out = self.proj(out.transpose(1, 2).reshape(b, hgt * wid, c))
        return x + out.view(b, hgt, wid, c).permute(0, 3, 1, 2)


class Downsample(nn.Module):
    """Halve the resolution.

    * ``"conv_asym"``: 3x3 stride-2 convolution after padding one row/column at the bottom/right only
      (TensorFlow ``SAME`` as in the original DDPM code; diffusers ``downsample_padding=0``).
    * ``"conv"``: 3x3 stride-2 convolution with symmetric padding 1 (improved-diffusion).
    * ``"avgpool"``: 2x2 average pooling (no parameters).
    """

    def __init__(self, ch: int, mode: str = "conv_asym"):
        super().__init__()
        if mode not in DOWNSAMPLE_MODES:
            raise ValueError(f"unknown downsample mode {mode!r}; valid modes: {', '.join(DOWNSAMPLE_MODES)}")
        self.mode = mode
        self.conv = None
        if mode != "avgpool":
            self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1 if mode == "conv" else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "avgpool":
            return F.avg_pool2d(x, 2)
        if self.mode == "conv_asym":
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


# Nearest-neighbour doubling followed by a 3x3 convolution (padding 1), one axis at a time: output row 2m
# reads upsampled rows 2m-1, 2m, 2m+1, i.e. input rows m-1 (tap 0) and m (taps 1 and 2); output row 2m+1
# reads input rows m (taps 0 and 1) and m+1 (tap 2).  That is a stride-2 transposed convolution (padding
# 1) whose 4-tap kernel is [w2, w1 + w2, w0 + w1, w0] = NEAREST_UP_TAPS @ [w0, w1, w2].
NEAREST_UP_TAPS = ((0.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0, 0.0), (1.0, 0.0, 0.0))


def nearest_upsample_conv_kernel(weight: torch.Tensor) -> torch.Tensor:
    """The ``conv_transpose2d`` kernel ``(C_in, C_out, 4, 4)`` equal to nearest x2 upsampling followed by
    the 3x3 convolution ``weight`` ``(C_out, C_in, 3, 3)``: ``K[i, o] = T @ weight[o, i] @ T^T`` with
    ``T = NEAREST_UP_TAPS``.  Differentiable; keeps ``weight``'s memory format."""
    if weight.shape[-2:] != (3, 3):
        raise ValueError(f"expected a 3x3 convolution weight, got shape {tuple(weight.shape)}")
    taps = weight.new_tensor(NEAREST_UP_TAPS)
    kernel = torch.einsum("pk,oikl,ql->iopq", taps, weight, taps)
    if weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous():
        kernel = kernel.contiguous(memory_format=torch.channels_last)
    return kernel


def nearest_upsample_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``conv2d(interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)`` computed as one
    stride-2 transposed convolution with a 4x4 kernel: the same function (equal up to rounding) with
    16 instead of 36 multiply-adds per input pixel and channel pair, and no upsampled copy of ``x``."""
    return F.conv_transpose2d(x, nearest_upsample_conv_kernel(weight), bias, stride=2, padding=1)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour interpolation, then a 3x3 convolution.

    The parameters are those of the 3x3 convolution (``conv.weight``, ``conv.bias``), as in the papers'
    code and diffusers.  With the ``upsample_transposed`` CPU path on and at least :attr:`MIN_HW` pixels
    a sample, the forward pass is :func:`nearest_upsample_conv`, the same function as one transposed
    convolution with 2.25x fewer multiply-adds (about 2x faster on CPU for the U-Nets' shapes, forward
    and backward); below that, oneDNN's transposed convolution is slower than the two plain steps, which
    are used instead, as they are on CUDA, under autocast and inside ``torch.compile``.
    """

    MIN_HW = 32  # per sample: the CIFAR-10 U-Net's 4x4 level takes the plain steps, 8x8 and up this one

    def __init__(self, ch: int):
        super().__init__()
        self.conv = MatmulGradConv2d(ch, ch, 3, padding=1)

    def _fast_path(self, x: torch.Tensor) -> bool:
        return x.ndim == 4 and x.shape[2] * x.shape[3] >= self.MIN_HW and cpu_fast.use("upsample_transposed", x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fast_path(x):
            return nearest_upsample_conv(x, self.conv.weight, self.conv.bias)
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
