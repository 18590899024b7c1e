"""The U-Net: exact paper parameter counts, shapes, gradients, determinism, conditioning, input checks."""

import pytest
import torch

from ddpmkit.networks import PRESETS, UNet, UNetConfig, unet_preset

# A tiny config with every feature switched on; used wherever the full presets would be slow.
TINY = UNetConfig(
    in_channels=3,
    image_size=16,
    ch=16,
    ch_mult=(1, 2),
    num_res_blocks=1,
    attn_resolutions=(8,),
    dropout=0.2,
    num_heads=2,
    norm_groups=4,
    num_classes=3,
)


def n_params(cfg):
    with torch.device("meta"):  # counts without allocating or initialising 50M floats
        return sum(p.numel() for p in UNet(cfg).parameters())


def randomized(net, seed=0, scale=0.1):
    """Replace the zero initialisation of residual outputs so that every path carries signal."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return net


def test_ddpm_cifar10_has_exactly_the_paper_parameter_count():
    assert n_params(unet_preset("ddpm-cifar10")) == 35_746_307


def test_iddpm_cifar10_has_exactly_the_paper_parameter_count():
    cfg = unet_preset("iddpm-cifar10")
    assert cfg.out_channels == 6 and cfg.scale_shift_norm and cfg.num_heads == 4
    assert n_params(cfg) == 52_546_438


def test_small_presets_are_small():
    assert 2_000_000 <= n_params(unet_preset("fashion-mnist")) <= 6_000_000
    assert n_params(unet_preset("fashion-mnist")) == 3_939_393
    assert n_params(unet_preset("digits")) == 701_345


@pytest.mark.parametrize(
    "name,sizes",
    [("ddpm-cifar10", [32]), ("iddpm-cifar10", [32]), ("fashion-mnist", [28, 32]), ("digits", [8, 16])],
)
def test_output_shape_of_every_preset(name, sizes):
    cfg = unet_preset(name)
    net = UNet(cfg).eval()
    for s in sizes:
        x = torch.randn(1, cfg.in_channels, s, s)
        with torch.no_grad():
            out = net(x, torch.tensor([7]))
        assert out.shape == (1, cfg.out_channels, s, s)
        assert out.is_contiguous()


def test_fashion_mnist_handles_28_natively_and_rejects_30():
    """28x28 needs no padding: 3 levels, 28 -> 14 -> 7. Sizes must be multiples of 4."""
    net = UNet(unet_preset("fashion-mnist")).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 1, 28, 28), torch.tensor([0, 999])).shape == (2, 1, 28, 28)
        assert net(torch.randn(2, 1, 32, 32), torch.tensor([0, 999])).shape == (2, 1, 32, 32)
        assert net(torch.randn(1, 1, 28, 32), torch.tensor([5])).shape == (1, 1, 28, 32)
    with pytest.raises(ValueError, match=r"height 30.*multiples of 4.*28, 32"):
        net(torch.randn(1, 1, 30, 30), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"size 30 .*multiples of 4"):
        unet_preset("fashion-mnist", image_size=30)


def test_learn_sigma_doubles_output_channels():
    net = UNet(unet_preset("digits", learn_sigma=True))
    assert net(torch.randn(2, 1, 8, 8), torch.tensor([1, 2])).shape == (2, 2, 8, 8)


@pytest.mark.parametrize("scale_shift", [False, True])
def test_every_parameter_receives_a_gradient(scale_shift):
    cfg = UNetConfig(**{**TINY.__dict__, "scale_shift_norm": scale_shift, "dropout": 0.0})
    net = randomized(UNet(cfg))
    x = torch.randn(4, 3, 16, 16)
    out = net(x, torch.tensor([0, 10, 100, 999]), torch.tensor([0, 1, 2, 3]))  # 3 = null label
    out.square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_zero_initialised_output_at_start():
    """DDPM/improved-diffusion initialise the output convolution to zero."""
    net = UNet(TINY)
    assert torch.count_nonzero(net(torch.randn(2, 3, 16, 16), torch.tensor([1, 2]))) == 0


def test_same_seed_same_weights_and_outputs():
    def make():
        torch.manual_seed(123)
        return randomized(UNet(TINY), seed=5).eval()

    a, b = make(), make()
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb), ka
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 400])
    assert torch.equal(a(x, t), b(x, t))


def test_dropout_only_in_training_mode():
    net = randomized(UNet(TINY))
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 400])
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x, t), net(x, t))
    net.train()
    with torch.no_grad():
        assert not torch.allclose(net(x, t), net(x, t))
    no_drop = randomized(UNet(UNetConfig(**{**TINY.__dict__, "dropout": 0.0}))).train()
    with torch.no_grad():
        assert torch.equal(no_drop(x, t), no_drop(x, t))


def test_null_label_path():
    net = randomized(UNet(TINY)).eval()
    assert net.null_label == 3 and net.label_emb.num_embeddings == 4
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 400])
    with torch.no_grad():
        uncond = net(x, t)  # y=None -> null label
        torch.testing.assert_close(uncond, net(x, t, torch.tensor([3, 3])))
        assert not torch.allclose(uncond, net(x, t, torch.tensor([0, 1])))
        mixed = net(x, t, torch.tensor([0, 3]))  # classifier-free guidance batches mix both
        torch.testing.assert_close(mixed[1], uncond[1])


def test_channels_last_input_and_internal_layout_give_the_same_output():
    net = randomized(UNet(TINY)).eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 400])
    with torch.no_grad():
        ref = net(x, t)
        out_cl = net(x.contiguous(memory_format=torch.channels_last), t)
        plain = UNet(UNetConfig(**{**TINY.__dict__, "channels_last": False})).eval()
        plain.load_state_dict(net.state_dict())
        out_plain = plain(x, t)
    assert out_cl.is_contiguous()
    torch.testing.assert_close(out_cl, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_plain, ref, atol=1e-5, rtol=1e-5)


def test_time_index_int_float_and_scalar():
    net = randomized(UNet(TINY)).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        a = net(x, torch.tensor([7, 7]))
        torch.testing.assert_close(a, net(x, torch.tensor([7.0, 7.0])))
        torch.testing.assert_close(a, net(x, 7))
        assert not torch.allclose(a, net(x, torch.tensor([7.5, 7.5])))


def test_bad_inputs_raise_clear_errors():
    net = UNet(TINY)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([1, 2])
    with pytest.raises(ValueError, match="1 channels but this U-Net expects in_channels=3"):
        net(torch.randn(2, 1, 16, 16), t)
    with pytest.raises(ValueError, match="shape"):
        net(x[0], t)
    with pytest.raises(ValueError, match=r"t must be a scalar or have shape \(2,\)"):
        net(x, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"labels must be in 0\.\.2 \(or 3 for the null label\)"):
        net(x, t, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="labels must be in"):
        net(x, t, torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="integer labels"):
        net(x, t, torch.tensor([0.0, 1.0]))
    uncond = UNet(UNetConfig(**{**TINY.__dict__, "num_classes": None}))
    with pytest.raises(ValueError, match="unconditional"):
        uncond(x, t, torch.tensor([0, 1]))


def test_config_errors_name_what_is_allowed():
    with pytest.raises(ValueError, match="valid presets: .*ddpm-cifar10.*digits.*fashion-mnist"):
        unet_preset("cifar100")
    with pytest.raises(ValueError, match="valid fields: .*attn_resolutions"):
        unet_preset("digits", attn_res=(4,))
    with pytest.raises(ValueError, match=r"attention resolution 5 .* valid: \[8, 4\]"):
        unet_preset("digits", attn_resolutions=(5,))
    with pytest.raises(ValueError, match="norm_groups"):
        unet_preset("digits", norm_groups=5)
    with pytest.raises(ValueError, match="conv_asym, conv, avgpool"):
        unet_preset("digits", downsample="pool")


def test_presets_are_frozen_and_listed():
    assert {"ddpm-cifar10", "iddpm-cifar10", "fashion-mnist", "digits"} <= set(PRESETS)
    with pytest.raises(AttributeError):
        PRESETS["digits"].ch = 3
    # lists (from TOML/JSON) are accepted and stored as tuples
    assert unet_preset("digits", ch_mult=[1, 2]).ch_mult == (1, 2)


def test_weights_are_channels_last_and_state_dict_round_trips(tmp_path):
    """channels_last=True stores conv weights channels_last (no per-call re-layout); a checkpoint written
    with .contiguous() (as safetensors needs) loads back exactly, and in-place state_dict updates
    (e.g. an EMA) still reach the parameters."""
    from safetensors.torch import load_file, save_file

    net = randomized(UNet(TINY))
    assert net.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "w.safetensors"))
    other = UNet(TINY)
    other.load_state_dict(load_file(str(tmp_path / "w.safetensors")))
    for k, v in net.state_dict().items():
        assert torch.equal(v, other.state_dict()[k]), k
    assert other.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        other.state_dict()["conv_in.weight"].zero_()
    assert torch.count_nonzero(other.conv_in.weight) == 0


def test_set_channels_last_relays_out_the_same_parameters_and_keeps_the_function():
    """Switching the layout re-lays out every conv weight in place (same Parameter objects, so an
    optimizer built before still holds them), switches the forward's layout, and changes the output
    only by float rounding (checked in float64, where the two layouts agree to 1e-12)."""
    net = randomized(UNet(TINY)).double().eval()
    params = list(net.parameters())
    x, t = torch.randn(2, TINY.in_channels, 8, 8, dtype=torch.float64), torch.tensor([3, 7])
    with torch.no_grad():
        out_cl = net(x, t)
        net.set_channels_last(False)
        out_plain = net(x, t)
    assert net.channels_last is False and net.config.channels_last is True  # the config records the start
    assert all(a is b for a, b in zip(params, net.parameters(), strict=True))
    assert net.conv_in.weight.is_contiguous() and not net.conv_in.weight.is_contiguous(
        memory_format=torch.channels_last)
    torch.testing.assert_close(out_plain, out_cl, rtol=0, atol=1e-12)
    net.set_channels_last(True)
    assert net.channels_last and net.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
