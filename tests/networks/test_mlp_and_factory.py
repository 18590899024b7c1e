"""MLP denoiser, the network factory and config (de)serialisation."""

import json
import warnings

import pytest
import torch

from ddpmkit.networks import (
    MLPConfig,
    MLPDenoiser,
    UNet,
    UNetConfig,
    build_network,
    config_from_dict,
    config_to_dict,
    maybe_compile,
    mlp_preset,
    network_config,
    unet_preset,
)


def test_mlp_shapes_time_and_gradients():
    net = MLPDenoiser(mlp_preset("toy2d"))
    assert sum(p.numel() for p in net.parameters()) == 412_674
    x = torch.randn(16, 2)
    out = net(x, torch.randint(0, 1000, (16,)))
    assert out.shape == (16, 2)
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    with torch.no_grad():
        torch.testing.assert_close(net(x, 5), net(x, torch.full((16,), 5.0)))
    assert MLPDenoiser(MLPConfig(learn_sigma=True))(x, 3).shape == (16, 4)


def test_mlp_class_conditioning_and_null_label():
    net = MLPDenoiser(mlp_preset("toy2d", num_classes=4))
    x, t = torch.randn(3, 2), torch.tensor([1, 2, 3])
    with torch.no_grad():
        torch.testing.assert_close(net(x, t), net(x, t, torch.tensor([4, 4, 4])))
        assert not torch.allclose(net(x, t), net(x, t, torch.tensor([0, 1, 2])))
    with pytest.raises(ValueError, match="labels must be in 0..3"):
        net(x, t, torch.tensor([0, 5, 1]))
    with pytest.raises(ValueError, match="unconditional"):
        MLPDenoiser()(x, t, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"shape \(B, 2\)"):
        net(torch.randn(3, 3), t)
    with pytest.raises(ValueError, match="valid presets: toy2d"):
        mlp_preset("spiral")


def test_build_network_from_kind_preset_overrides_and_config():
    net = build_network("unet", "digits", num_classes=10)
    assert isinstance(net, UNet) and net.config.num_classes == 10 and net.config.ch == 32
    assert isinstance(build_network("mlp"), MLPDenoiser)
    assert build_network(unet_preset("digits"), dropout=0.2).config.dropout == 0.2
    assert network_config("unet").ch == 128  # default preset: ddpm-cifar10
    with pytest.raises(ValueError, match="valid kinds: unet, mlp"):
        build_network("transformer")
    with pytest.raises(ValueError, match="valid fields"):
        build_network(unet_preset("digits"), depth=3)
    with pytest.raises(ValueError, match="not both"):
        build_network(unet_preset("digits"), "digits")


@pytest.mark.parametrize("cfg", [unet_preset("iddpm-cifar10", num_classes=10), MLPConfig(num_classes=3)])
def test_config_dict_round_trip_through_json(cfg):
    d = config_to_dict(cfg)
    assert d["kind"] in ("unet", "mlp")
    back = config_from_dict(json.loads(json.dumps(d)))
    assert back == cfg and type(back) is type(cfg)


def test_config_from_dict_rejects_unknown_keys_naming_valid_ones():
    d = config_to_dict(unet_preset("digits"))
    d["chanels"] = 3
    with pytest.raises(ValueError, match=r"unknown UNetConfig key\(s\) \['chanels'\]; valid keys: kind, in_channels"):
        config_from_dict(d)
    with pytest.raises(ValueError, match="valid kinds"):
        config_from_dict({"kind": "vit"})
    assert isinstance(config_from_dict({"kind": "unet"}), UNetConfig)


def test_maybe_compile_falls_back_cleanly(monkeypatch):
    net = build_network("mlp")

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert maybe_compile(net) is net
    assert any("running eagerly" in str(w.message) for w in caught)


def test_mlp_input_scale_multiplies_the_input_and_defaults_to_none():
    torch.manual_seed(0)
    scaled = MLPDenoiser(MLPConfig(hidden=16, num_layers=2, input_scale=3.0))
    plain = MLPDenoiser(MLPConfig(hidden=16, num_layers=2))
    plain.load_state_dict(scaled.state_dict())
    x, t = torch.randn(5, 2), torch.tensor([0, 3, 10, 200, 999])
    with torch.no_grad():
        assert torch.equal(scaled(x, t), plain(3.0 * x, t))
    assert MLPConfig().input_scale == 1.0 and mlp_preset("toy2d").input_scale == 1.0
    # a stored config written before the field existed means what it meant then
    old = {k: v for k, v in config_to_dict(MLPConfig(hidden=16)).items() if k != "input_scale"}
    assert config_from_dict(old) == MLPConfig(hidden=16)
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="input_scale"):
            MLPConfig(input_scale=bad)
