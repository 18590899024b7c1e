"""Closed-form checks of the U-Net building blocks."""

import math

import pytest
import torch
import torch.nn.functional as F

from ddpmkit.networks import cpu_fast, layers
from ddpmkit.networks.layers import (
    AttentionBlock,
    Downsample,
    Dropout,
    GroupNorm,
    MatmulGradConv2d,
    ResBlock,
    Upsample,
    _GroupNormChannelsLast,
    conv3x3_weight_grad,
    nearest_upsample_conv,
    nearest_upsample_conv_kernel,
    timestep_embedding,
)


@pytest.fixture(autouse=True)
def _all_cpu_paths():
    """Every CPU speed path on, whatever this machine's profile keeps: each is checked against the plain op."""
    with cpu_fast.paths("all"):
        yield


def _randomize(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return module


def test_timestep_embedding_ddpm_convention():
    """DDPM / google/ddpm-cifar10-32: [sin, cos], frequencies exp(-ln(1e4) * i / (half - 1))."""
    t = torch.tensor([0, 1, 17, 999])
    emb = timestep_embedding(t, 8, flip_sin_to_cos=False, freq_shift=1)
    freqs = torch.tensor([math.exp(-math.log(10000) * i / 3) for i in range(4)])
    args = t.double()[:, None] * freqs.double()[None]
    expected = torch.cat([args.sin(), args.cos()], dim=1).float()
    torch.testing.assert_close(emb, expected, atol=1e-4, rtol=1e-5)


def test_timestep_embedding_improved_convention():
    """improved-diffusion: [cos, sin], frequencies exp(-ln(1e4) * i / half)."""
    t = torch.tensor([0.0, 2.5, 400.0])
    emb = timestep_embedding(t, 8, flip_sin_to_cos=True, freq_shift=0)
    freqs = torch.tensor([math.exp(-math.log(10000) * i / 4) for i in range(4)])
    args = t.double()[:, None] * freqs.double()[None]
    expected = torch.cat([args.cos(), args.sin()], dim=1).float()
    torch.testing.assert_close(emb, expected, atol=1e-4, rtol=1e-5)


def test_timestep_embedding_int_and_float_agree_and_odd_dim_pads():
    t_int = torch.tensor([3, 250])
    torch.testing.assert_close(timestep_embedding(t_int, 16), timestep_embedding(t_int.float(), 16))
    odd = timestep_embedding(t_int, 9)
    assert odd.shape == (2, 9) and torch.all(odd[:, -1] == 0)
    with pytest.raises(ValueError, match="shape"):
        timestep_embedding(torch.zeros(2, 1), 8)


def test_timestep_embedding_matches_diffusers():
    emb_mod = pytest.importorskip("diffusers.models.embeddings", reason="diffusers extra not installed")
    t = torch.tensor([0, 5, 999])
    for flip, shift in ((False, 1), (True, 0)):
        ref = emb_mod.get_timestep_embedding(t, 128, flip_sin_to_cos=flip, downscale_freq_shift=shift)
        torch.testing.assert_close(timestep_embedding(t, 128, flip_sin_to_cos=flip, freq_shift=shift), ref)


@pytest.mark.parametrize("scale_shift", [False, True])
def test_resblock_matches_written_formula(scale_shift):
    blk = _randomize(ResBlock(8, 16, 12, norm_groups=4, scale_shift_norm=scale_shift)).eval()
    x, temb = torch.randn(2, 8, 6, 6), torch.randn(2, 12)
    h = blk.conv1(F.silu(blk.norm1(x)))
    e = blk.temb_proj(temb)[:, :, None, None]
    if scale_shift:
        s, b = e.chunk(2, dim=1)
        h = F.group_norm(h, 4, blk.norm2.weight, blk.norm2.bias, 1e-6) * (1 + s) + b
    else:
        h = F.group_norm(h + e, 4, blk.norm2.weight, blk.norm2.bias, 1e-6)
    expected = blk.skip(x) + blk.conv2(F.silu(h))
    torch.testing.assert_close(blk(x, temb), expected)
    assert blk.skip.kernel_size == (1, 1)
    assert ResBlock(8, 16, 12, norm_groups=4, skip_conv3x3=True).skip.kernel_size == (3, 3)
    assert isinstance(ResBlock(8, 8, 12, norm_groups=4).skip, torch.nn.Identity)


def test_resblock_starts_as_identity_on_unchanged_channels():
    blk = ResBlock(8, 8, 4, norm_groups=4)  # conv2 is zero-initialised (DDPM init_scale=0)
    x = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(blk(x, torch.randn(2, 4)), x)


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_attention_matches_naive_softmax(heads):
    blk = _randomize(AttentionBlock(16, num_heads=heads, norm_groups=4)).eval()
    x = torch.randn(2, 16, 3, 5)
    b, c, hh, ww = x.shape
    d = c // heads
    h = blk.norm(x).reshape(b, c, hh * ww).transpose(1, 2)  # (B, N, C)
    q, k, v = blk.qkv(h).chunk(3, dim=-1)
    outs = []
    for i in range(heads):
        sl = slice(i * d, (i + 1) * d)
        w = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(d), dim=-1)
        outs.append(w @ v[..., sl])
    expected = x + blk.proj(torch.cat(outs, dim=-1)).transpose(1, 2).reshape(b, c, hh, ww)
    torch.testing.assert_close(blk(x), expected, atol=1e-5, rtol=1e-5)
    cl = blk(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(cl, expected, atol=1e-5, rtol=1e-5)


def test_attention_heads_must_divide_channels():
    with pytest.raises(ValueError, match="num_heads"):
        AttentionBlock(12, num_heads=5, norm_groups=4)


def test_downsample_modes():
    x = torch.randn(2, 4, 8, 8)
    asym = Downsample(4, "conv_asym")
    torch.testing.assert_close(asym(x), F.conv2d(F.pad(x, (0, 1, 0, 1)), asym.conv.weight, asym.conv.bias, 2))
    sym = Downsample(4, "conv")
    torch.testing.assert_close(sym(x), F.conv2d(x, sym.conv.weight, sym.conv.bias, 2, padding=1))
    pool = Downsample(4, "avgpool")
    torch.testing.assert_close(pool(x), F.avg_pool2d(x, 2))
    assert not list(pool.parameters())
    for mod in (asym, sym, pool):
        assert mod(x).shape == (2, 4, 4, 4)
    with pytest.raises(ValueError, match="conv_asym, conv, avgpool"):
        Downsample(4, "strided")


def _nearest_then_conv(x, weight, bias):
    """The written definition: repeat every pixel 2x2, then a 3x3 convolution with zero padding 1."""
    up = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    return F.conv2d(up, weight, bias, padding=1)


@pytest.mark.parametrize("shape", [(1, 4, 3, 3), (2, 3, 5, 7), (3, 2, 1, 4), (2, 5, 8, 6)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_nearest_upsample_conv_equals_nearest_then_conv(shape, channels_last, bias):
    """The transposed convolution with kernel T w T^T is the same function as repeat-then-conv, and has
    the same gradients with respect to x, the 3x3 weight and the bias (float64, to rounding)."""
    g = torch.Generator().manual_seed(1)
    c_in, c_out = shape[1], 6
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    w = torch.randn(c_out, c_in, 3, 3, generator=g, dtype=torch.float64)
    b = torch.randn(c_out, generator=g, dtype=torch.float64) if bias else None
    if channels_last:
        x, w = x.to(memory_format=torch.channels_last), w.to(memory_format=torch.channels_last)
    grad = torch.randn(shape[0], c_out, 2 * shape[2], 2 * shape[3], generator=g, dtype=torch.float64)
    results = []
    for fn in (_nearest_then_conv, nearest_upsample_conv):
        leaves = [t.detach().clone().requires_grad_() for t in (x, w) + ((b,) if bias else ())]
        out = fn(leaves[0], leaves[1], leaves[2] if bias else None)
        out.backward(grad)
        results.append([out.detach()] + [t.grad for t in leaves])
    assert results[1][0].shape == (shape[0], c_out, 2 * shape[2], 2 * shape[3])
    for got, want in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    if channels_last and shape[1] > 1:
        assert results[1][0].is_contiguous(memory_format=torch.channels_last)


def test_nearest_upsample_kernel_is_the_summed_taps():
    """One axis: K = [w2, w1 + w2, w0 + w1, w0]; in 2-D the outer product of that rule on both axes."""
    w = torch.arange(9, dtype=torch.float64).view(1, 1, 3, 3) + 1  # w[kh, kw] = 3 kh + kw + 1
    k = nearest_upsample_conv_kernel(w)[0, 0]
    taps = [[2], [1, 2], [0, 1], [0]]
    expected = torch.tensor([[sum(w[0, 0, r, c] for r in rows for c in cols) for cols in taps] for rows in taps])
    torch.testing.assert_close(k, expected, rtol=0, atol=0)
    assert nearest_upsample_conv_kernel(torch.randn(5, 3, 3, 3)).shape == (3, 5, 4, 4)
    with pytest.raises(ValueError, match="3x3"):
        nearest_upsample_conv_kernel(torch.randn(2, 2, 1, 1))


def test_nearest_upsample_conv_passes_gradcheck():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 3, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(nearest_upsample_conv, (x, w, b))


def test_upsample_takes_the_transposed_path_from_min_hw(monkeypatch):
    """Both paths compute nearest-then-conv; the transposed one is taken from MIN_HW pixels a sample up,
    at any batch size, never with the path switched off; parameters are the 3x3 conv's either way."""
    calls = []
    real = layers.nearest_upsample_conv
    monkeypatch.setattr(layers, "nearest_upsample_conv", lambda *a: calls.append(1) or real(*a))
    up = _randomize(Upsample(4))
    assert [k for k, _ in up.named_parameters()] == ["conv.weight", "conv.bias"]
    assert Upsample.MIN_HW == 32
    cases = [(torch.randn(1, 4, 3, 3), False), (torch.randn(64, 4, 4, 4), False),  # 16 pixels, any batch
             (torch.randn(1, 4, 8, 4), True), (torch.randn(5, 4, 8, 8), True)]
    for x, transposed in cases:
        calls.clear()
        want = _nearest_then_conv(x, up.conv.weight, up.conv.bias)
        torch.testing.assert_close(up(x), want, rtol=1e-5, atol=1e-5)
        assert calls == ([1] if transposed else []), x.shape
    large = cases[-1][0]
    with cpu_fast.paths("none"):
        calls.clear()
        torch.testing.assert_close(up(large), _nearest_then_conv(large, up.conv.weight, up.conv.bias))
        assert calls == []


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_dropout_keeps_the_mean_and_drops_at_rate_p(p):
    d = Dropout(p)
    assert abs(d.effective_p - p) <= 2**-16
    torch.manual_seed(0)
    x = torch.ones(2_000_003, dtype=torch.float64)  # odd size: the last 32-bit word is half used
    y = d(x)
    kept = y != 0
    scale = 1 / (1 - d.effective_p)
    assert torch.all(y[kept] == scale)  # kept elements are scaled exactly, in x's dtype
    rate = 1 - kept.double().mean().item()
    se = math.sqrt(p * (1 - p) / x.numel())
    assert abs(rate - d.effective_p) < 5 * se
    assert abs(y.mean().item() - 1.0) < 5 * se * scale


def test_dropout_gradient_is_the_mask_and_layout_is_kept():
    d = Dropout(0.2)
    x = torch.randn(4, 8, 6, 6).contiguous(memory_format=torch.channels_last).requires_grad_()
    torch.manual_seed(1)
    y = d(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    mask = torch.where(x != 0, y / x, 0.0).detach()
    assert torch.allclose(mask[mask != 0], torch.full_like(mask[mask != 0], 1 / (1 - d.effective_p)))
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, mask)
    torch.manual_seed(1)  # same seed, same mask
    torch.testing.assert_close(d(x.detach()), y.detach())
    torch.manual_seed(2)
    assert not torch.equal(d(x.detach()), y.detach())


def test_dropout_identity_in_eval_mode_and_at_zero():
    x = torch.randn(3, 5)
    assert Dropout(0.3).eval()(x) is x
    assert Dropout(0.0)(x) is x
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.0)


# ----------------------------------------------------------------------------------------------------
# MatmulGradConv2d: the CPU weight gradient of wide 3x3 convolutions as three matrix products
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (1, 6, 1, 7), (3, 4, 8, 8)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv3x3_weight_grad_equals_the_convolution_gradient(shape, channels_last):
    """Float64: the three products give torch's convolution weight and bias gradients to rounding."""
    g = torch.Generator().manual_seed(sum(shape))
    b, c_in, h, w = shape
    c_out = 5
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    grad_out = torch.randn(b, c_out, h, w, generator=g, dtype=torch.float64)
    if channels_last:
        x, grad_out = (t.contiguous(memory_format=torch.channels_last) for t in (x, grad_out))
    weight = torch.randn(c_out, c_in, 3, 3, generator=g, dtype=torch.float64)
    _, ref_w, ref_b = torch.ops.aten.convolution_backward(
        grad_out, x, weight, [c_out], (1, 1), (1, 1), (1, 1), False, (0, 0), 1, (False, True, True)
    )
    grad_w, grad_b = conv3x3_weight_grad(grad_out, x)
    assert grad_w.shape == weight.shape
    torch.testing.assert_close(grad_w, ref_w, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_b, ref_b, rtol=1e-12, atol=1e-12)


def test_matmul_grad_conv_function_passes_gradcheck():
    from ddpmkit.networks.layers import _Conv3x3MatmulGrad

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_Conv3x3MatmulGrad.apply, (x, w, bias))


def test_matmul_grad_conv_applies_only_to_wide_3x3_stride1_pad1():
    assert MatmulGradConv2d(128, 256, 3, padding=1).matmul_weight_grad
    assert MatmulGradConv2d(128, 128, 3, padding=1, bias=False).matmul_weight_grad
    for conv in (
        MatmulGradConv2d(64, 256, 3, padding=1),  # below MIN_CHANNELS: oneDNN is faster there
        MatmulGradConv2d(256, 3, 3, padding=1),
        MatmulGradConv2d(128, 128, 1),
        MatmulGradConv2d(128, 128, 3, stride=2, padding=1),
        MatmulGradConv2d(128, 128, 3, padding=2, dilation=2),
        MatmulGradConv2d(128, 128, 3, padding=1, groups=2),
        MatmulGradConv2d(128, 128, 3, padding=1, padding_mode="reflect"),
    ):
        assert not conv.matmul_weight_grad
    # same parameters and state-dict keys as nn.Conv2d (checkpoints and the diffusers converter)
    plain_keys = torch.nn.Conv2d(128, 128, 3, padding=1).state_dict().keys()
    assert MatmulGradConv2d(128, 128, 3, padding=1).state_dict().keys() == plain_keys


def _twin_convs(bias=True, channels_last=True):
    fast = MatmulGradConv2d(128, 128, 3, padding=1, bias=bias)
    plain = torch.nn.Conv2d(128, 128, 3, padding=1, bias=bias)
    plain.load_state_dict(fast.state_dict())
    if channels_last:
        fast, plain = fast.to(memory_format=torch.channels_last), plain.to(memory_format=torch.channels_last)
    return fast, plain


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_matmul_grad_conv_matches_nn_conv2d(channels_last, bias):
    fast, plain = _twin_convs(bias, channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 128, 6, 5).contiguous(memory_format=fmt)
    gy = torch.randn(2, 128, 6, 5)
    xs = [x.clone().requires_grad_() for _ in range(2)]
    y_fast, y_plain = fast(xs[0]), plain(xs[1])
    assert type(y_fast.grad_fn).__name__.startswith("_Conv3x3MatmulGrad")  # the fast path was taken
    torch.testing.assert_close(y_fast, y_plain, rtol=0, atol=0)  # the forward is the same oneDNN call
    y_fast.backward(gy)
    y_plain.backward(gy)
    torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.weight.grad, plain.weight.grad, rtol=1e-4, atol=1e-4)
    # gradients arrive in the weight's own memory layout (no copy by AccumulateGrad, same as nn.Conv2d)
    assert fast.weight.grad.stride() == fast.weight.stride()
    if bias:
        torch.testing.assert_close(fast.bias.grad, plain.bias.grad, rtol=1e-4, atol=1e-4)


def test_matmul_grad_conv_without_input_grad_and_plain_paths():
    fast, plain = _twin_convs()
    x = torch.randn(1, 128, 4, 4)
    y = fast(x)  # x needs no gradient: only weight and bias get one
    assert type(y.grad_fn).__name__.startswith("_Conv3x3MatmulGrad")
    y.sum().backward()
    plain(x).sum().backward()
    torch.testing.assert_close(fast.weight.grad, plain.weight.grad, rtol=1e-4, atol=1e-4)
    # inference, frozen weights and other dtypes take nn.Conv2d's own path
    with torch.no_grad():
        assert fast(x).grad_fn is None
    fast.weight.requires_grad_(False)
    assert not type(fast(x.requires_grad_()).grad_fn).__name__.startswith("_Conv3x3MatmulGrad")
    fast.weight.requires_grad_(True)
    y = fast.double()(x.detach().double().requires_grad_())
    assert not type(y.grad_fn).__name__.startswith("_Conv3x3MatmulGrad")


def _group_norm_results(fn, x, w, b, grad):
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    out = fn(*leaves)
    out.backward(grad)
    return [out.detach()] + [t.grad for t in leaves]


@pytest.mark.parametrize(
    "shape,groups", [((2, 8, 5, 7), 2), ((3, 12, 4, 4), 3), ((2, 6, 3, 5), 6), ((1, 32, 6, 6), 8), ((4, 5, 1, 1), 1)]
)
@pytest.mark.parametrize("grad_channels_last", [True, False])
def test_channels_last_group_norm_equals_torch(shape, groups, grad_channels_last):
    """Output and the gradients of x, weight and bias equal torch's GroupNorm (float64, to rounding),
    also for inputs far from zero mean, one channel a group, one position, and a grad not channels_last."""
    g = torch.Generator().manual_seed(3)
    c = shape[1]
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 20).to(memory_format=torch.channels_last)
    w = torch.randn(c, generator=g, dtype=torch.float64)
    b = torch.randn(c, generator=g, dtype=torch.float64)
    grad = torch.randn(shape, generator=g, dtype=torch.float64)
    if grad_channels_last:
        grad = grad.to(memory_format=torch.channels_last)
    want = _group_norm_results(lambda x, w, b: F.group_norm(x, groups, w, b, 1e-6), x, w, b, grad)
    got = _group_norm_results(lambda x, w, b: _GroupNormChannelsLast.apply(x, w, b, groups, 1e-6), x, w, b, grad)
    for a, e in zip(got, want, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-9)
    if shape[2] * shape[3] > 1:
        assert got[0].is_contiguous(memory_format=torch.channels_last)
        assert got[1].is_contiguous(memory_format=torch.channels_last)


def test_channels_last_group_norm_passes_gradcheck():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 12, 3, 4, generator=g, dtype=torch.float64).to(memory_format=torch.channels_last)
    w = torch.randn(12, generator=g, dtype=torch.float64)
    b = torch.randn(12, generator=g, dtype=torch.float64)
    args = [t.requires_grad_() for t in (x, w, b)]
    assert torch.autograd.gradcheck(lambda x, w, b: _GroupNormChannelsLast.apply(x, w, b, 3, 1e-6), args)


def test_group_norm_fast_path_selection(monkeypatch):
    """The sums path is taken only for affine, narrow (<= MAX_CHANNELS), group size not a multiple of 8,
    large enough (>= MIN_HW pixels a sample, any batch), float32/64 channels_last CPU inputs; the result
    is torch's either way."""
    calls = []
    real = _GroupNormChannelsLast.apply
    monkeypatch.setattr(_GroupNormChannelsLast, "apply", lambda *a: calls.append(1) or real(*a))
    cl = torch.channels_last
    big = torch.randn(8, 32, 28, 28).to(memory_format=cl)  # 6272 positions
    cases = [
        (GroupNorm(8, 32), big, True),  # 4 channels a group
        (GroupNorm(8, 96), torch.randn(8, 96, 28, 28).to(memory_format=cl), True),  # 12 a group
        (GroupNorm(4, 32), big, False),  # 8 a group: torch's kernel is fast
        (GroupNorm(32, 128), torch.randn(8, 128, 28, 28).to(memory_format=cl), False),  # wider than MAX_CHANNELS
        (GroupNorm(8, 32, affine=False), big, False),
        (GroupNorm(8, 32), big.contiguous(), False),  # NCHW
        (GroupNorm(8, 32), torch.randn(64, 32, 8, 8).to(memory_format=cl), False),  # 64 pixels a sample
        (GroupNorm(8, 32), torch.randn(1, 32, 28, 28).to(memory_format=cl), True),  # batch 1 as batch 8
        (GroupNorm(8, 32).double(), big.double(), True),
        (GroupNorm(8, 32).half(), big.half(), False),
    ]
    assert GroupNorm.MAX_CHANNELS == 96 and GroupNorm.MIN_HW == 28 * 28
    for norm, x, fast in cases:
        if norm.affine:
            _randomize(norm)
        calls.clear()
        out = norm(x)
        assert calls == ([1] if fast else []), (norm, x.shape, x.dtype)
        if x.dtype != torch.half:
            want = F.group_norm(x.contiguous(), norm.num_groups, norm.weight, norm.bias, norm.eps)
            torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)
    assert list(GroupNorm(8, 32).state_dict()) == list(torch.nn.GroupNorm(8, 32).state_dict())


def test_group_norm_fast_path_with_frozen_affine_and_no_grad():
    norm = _randomize(GroupNorm(8, 32)).requires_grad_(False)
    x = torch.randn(8, 32, 28, 28).to(memory_format=torch.channels_last).requires_grad_()
    norm(x).square().sum().backward()
    assert norm.weight.grad is None and norm.bias.grad is None
    ref = x.detach().contiguous().requires_grad_()
    F.group_norm(ref, 8, norm.weight, norm.bias, norm.eps).square().sum().backward()
    torch.testing.assert_close(x.grad, ref.grad, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(norm(x), F.group_norm(ref, 8, norm.weight, norm.bias, norm.eps))
