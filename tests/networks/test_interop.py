"""diffusers interop: load a diffusers UNet2DModel (DDPM layout) into ours, export ours back.

The round trip through our own writer/reader needs no diffusers; the comparisons against diffusers'
implementation skip (with the reason) only when the optional `interop` extra is missing.
"""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from ddpmkit.networks import UNet, UNetConfig, load_diffusers_unet, save_diffusers_unet, unet_preset
from ddpmkit.networks.convert_diffusers import (
    diffusers_config_to_unet_config,
    diffusers_state_to_ours,
    ours_state_to_diffusers,
    unet_config_to_diffusers,
)
from ddpmkit.testing.diffusers_layouts import GOOGLE_DDPM_CIFAR10_UNET

NEED_DIFFUSERS = "diffusers (the optional `interop` extra, installed by `make test`) is not installed"

GOOGLE_DDPM_CIFAR10 = GOOGLE_DDPM_CIFAR10_UNET

# Same block types as google/ddpm-cifar10-32, tiny channels.
TINY_DDPM = dict(
    GOOGLE_DDPM_CIFAR10,
    sample_size=16,
    block_out_channels=[32, 64],
    down_block_types=["DownBlock2D", "AttnDownBlock2D"],
    up_block_types=["AttnUpBlock2D", "UpBlock2D"],
    norm_num_groups=8,
)
# Other features the converter maps: scale-shift norm, heads via attention_head_dim, learned sigma,
# class labels (the last row is our null label), symmetric downsampling padding, improved time embedding.
TINY_IMPROVED = dict(
    TINY_DDPM,
    in_channels=1,
    out_channels=2,
    block_out_channels=[16, 32, 32],
    down_block_types=["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    up_block_types=["AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    layers_per_block=1,
    norm_num_groups=16,
    attn_norm_num_groups=16,
    norm_eps=1e-5,
    attention_head_dim=8,
    resnet_time_scale_shift="scale_shift",
    downsample_padding=1,
    flip_sin_to_cos=True,
    freq_shift=0,
    num_class_embeds=5,
)


def _diffusers_model(config):
    diffusers = pytest.importorskip("diffusers", reason=NEED_DIFFUSERS)
    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    torch.manual_seed(0)
    return diffusers.UNet2DModel(**kwargs).eval()


def _inputs(config, batch=4):
    g = torch.Generator().manual_seed(1)
    size = config["sample_size"]
    x = torch.randn(batch, config["in_channels"], size, size, generator=g)
    t = torch.tensor([0, 17, 500, 999])[:batch]
    y = torch.randint(0, config["num_class_embeds"], (batch,), generator=g) if config.get("num_class_embeds") else None
    return x, t, y


@pytest.mark.parametrize("config", [TINY_DDPM, TINY_IMPROVED], ids=["ddpm-layout", "scale-shift-heads-labels"])
def test_diffusers_model_loads_into_ours_with_the_same_outputs(config, tmp_path):
    theirs = _diffusers_model(config)
    theirs.save_pretrained(tmp_path)
    ours = load_diffusers_unet(tmp_path).eval()
    x, t, y = _inputs(config)
    with torch.no_grad():
        expected = theirs(x, t, class_labels=y).sample
        got = ours(x, t, y)
    assert expected.abs().max() > 0.1  # random diffusers init: a non-trivial output
    assert (got - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("config", [TINY_DDPM, TINY_IMPROVED], ids=["ddpm-layout", "scale-shift-heads-labels"])
def test_our_export_loads_in_diffusers_with_the_same_outputs(config, tmp_path):
    theirs = _diffusers_model(config)
    ours = UNet(diffusers_config_to_unet_config(config))
    with torch.no_grad():  # random, non-zero weights everywhere
        for p in ours.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    save_diffusers_unet(ours.eval(), tmp_path)
    reloaded = type(theirs).from_pretrained(tmp_path).eval()
    x, t, y = _inputs(config)
    with torch.no_grad():
        assert (reloaded(x, t, class_labels=y).sample - ours(x, t, y)).abs().max() <= 1e-5


@pytest.mark.parametrize("name", ["ddpm-cifar10", "digits", "fashion-mnist"])
def test_round_trip_ours_to_diffusers_layout_to_ours_is_exact(name, tmp_path):
    net = UNet(unet_preset(name, num_classes=10) if name != "ddpm-cifar10" else unet_preset(name))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    save_diffusers_unet(net, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["_class_name"] == "UNet2DModel"
    back = load_diffusers_unet(tmp_path, dropout=net.config.dropout)
    assert back.config == net.config
    for (k, a), (k2, b) in zip(net.state_dict().items(), back.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k


def test_old_attention_key_names_and_bin_weights(tmp_path):
    """Hub checkpoints of 2022 use query/key/value/proj_attn; some ship only a .bin file."""
    net = UNet(diffusers_config_to_unet_config(TINY_DDPM))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    save_diffusers_unet(net, tmp_path)
    sd = load_file(str(tmp_path / "diffusion_pytorch_model.safetensors"))
    renames = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    for old, new in renames.items():
        sd = {k.replace(old, new): v for k, v in sd.items()}
    (tmp_path / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(sd, tmp_path / "diffusion_pytorch_model.bin")
    back = load_diffusers_unet(tmp_path, dropout=net.config.dropout)
    for k, v in net.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k


def test_google_ddpm_cifar10_config_is_our_preset_with_the_same_parameter_count():
    cfg = diffusers_config_to_unet_config(GOOGLE_DDPM_CIFAR10, dropout=0.1)
    assert cfg == unet_preset("ddpm-cifar10")
    assert unet_config_to_diffusers(cfg)["up_block_types"] == GOOGLE_DDPM_CIFAR10["up_block_types"]
    theirs = _diffusers_model(GOOGLE_DDPM_CIFAR10)
    assert sum(p.numel() for p in theirs.parameters()) == 35_746_307
    ours = UNet(cfg).eval()
    # Every tensor of the full-size layout maps, strictly both ways, and gives the same outputs.
    ours.load_state_dict(diffusers_state_to_ours(theirs.state_dict(), cfg), strict=True)
    x, t, _ = _inputs(GOOGLE_DDPM_CIFAR10, batch=2)
    with torch.no_grad():
        assert (ours(x, t) - theirs(x, t).sample).abs().max() <= 1e-5


def test_unsupported_diffusers_configs_are_refused_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match="resnet_time_scale_shift='spatial' is not supported"):
        diffusers_config_to_unet_config(dict(TINY_DDPM, resnet_time_scale_shift="spatial"))
    with pytest.raises(ValueError, match="set attn_norm_num_groups"):
        diffusers_config_to_unet_config(dict(TINY_DDPM, resnet_time_scale_shift="scale_shift"))
    with pytest.raises(ValueError, match="CrossAttnDownBlock2D|only"):
        diffusers_config_to_unet_config(dict(TINY_DDPM, down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"]))
    with pytest.raises(ValueError, match="no diffusers"):
        unet_config_to_diffusers(UNetConfig(downsample="avgpool"))
    (tmp_path / "config.json").write_text(json.dumps(TINY_DDPM))
    with pytest.raises(FileNotFoundError, match="neither"):
        load_diffusers_unet(tmp_path)
    save_file({"conv_in.weight": torch.zeros(1)}, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    with pytest.raises((ValueError, KeyError)):
        load_diffusers_unet(tmp_path)


# google/ddpm-celebahq-256's unet config.json (values as published; ddpm-cat-256 publishes the same, and
# ddpm-church-256 / ddpm-bedroom-256 are the same TF model, diffusion_tf's unet2d16b2c112244).
GOOGLE_DDPM_256 = dict(
    GOOGLE_DDPM_CIFAR10,
    block_out_channels=[128, 128, 256, 256, 512, 512],
    down_block_types=["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4,
    sample_size=256,
)


def _same_count_and_tensors(theirs, cfg, expected_params):
    """Ours built from ``cfg`` has ``expected_params`` parameters, as theirs does, and their weights load
    into ours strictly and map back to exactly theirs: every key, every value."""
    ours = UNet(cfg)
    n = sum(p.numel() for p in theirs.parameters())
    assert n == sum(p.numel() for p in ours.parameters()) == expected_params
    theirs_sd = theirs.state_dict()
    ours.load_state_dict(diffusers_state_to_ours(theirs_sd, cfg), strict=True)
    mapped = ours_state_to_diffusers(ours.state_dict(), cfg)
    assert mapped.keys() == theirs_sd.keys()
    for k, v in theirs_sd.items():
        assert torch.equal(mapped[k], v), k


def test_google_ddpm_256_config_is_our_preset_with_the_paper_parameter_count():
    """DDPM's 256x256 CelebA-HQ / LSUN model: the paper's "114M"; every tensor maps strictly both ways."""
    cfg = diffusers_config_to_unet_config(GOOGLE_DDPM_256)
    assert cfg == unet_preset("ddpm-256")
    assert unet_config_to_diffusers(cfg)["up_block_types"] == GOOGLE_DDPM_256["up_block_types"]
    _same_count_and_tensors(_diffusers_model(GOOGLE_DDPM_256), cfg, 113_673_219)


def test_google_ddpm_256_layout_from_hub_style_files_gives_diffusers_outputs(tmp_path):
    """The 256 layout (6 levels, attention at 16x16 only) at a quarter of the channels, written as the Hub's
    2022 files are (a .bin with query/key/value/proj_attn names), loads into ours with the same outputs.
    Inputs are 64x64: every level and the 16x16-attention level run (at 4x4), at a fraction of the cost."""
    small = dict(GOOGLE_DDPM_256, block_out_channels=[32, 32, 64, 64, 128, 128])
    theirs = _diffusers_model(small)
    theirs.save_pretrained(tmp_path, safe_serialization=True)
    sd = load_file(str(tmp_path / "diffusion_pytorch_model.safetensors"))
    for new, old in {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}.items():
        sd = {k.replace(new, old): v for k, v in sd.items()}
    (tmp_path / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(sd, tmp_path / "diffusion_pytorch_model.bin")
    ours = load_diffusers_unet(tmp_path).eval()
    assert ours.config == unet_preset("ddpm-256", ch=32)
    g = torch.Generator().manual_seed(3)
    x, t = torch.randn(2, 3, 64, 64, generator=g), torch.tensor([5, 900])
    with torch.no_grad():
        expected = theirs(x, t).sample
        assert expected.abs().max() > 0.1
        assert (ours(x, t) - expected).abs().max() <= 1e-5


def test_iddpm_imagenet64_preset_parameter_count_equals_diffusers():
    """Improved DDPM's ImageNet 64x64 model (improved-diffusion README flags + its defaults)."""
    cfg = unet_preset("iddpm-imagenet64")
    assert (cfg.ch, cfg.ch_mult, cfg.num_res_blocks, cfg.attn_resolutions, cfg.num_heads, cfg.dropout) == (
        128, (1, 2, 3, 4), 3, (16, 8), 4, 0.0)
    assert cfg.learn_sigma and cfg.scale_shift_norm and cfg.out_channels == 6
    # diffusers has one head size for all blocks; 4 heads on 384 and 512 channels are two sizes. Heads split
    # the same q/k/v matrices, so one head gives the same parameters (and the same state-dict keys).
    dcfg = unet_config_to_diffusers(dataclasses.replace(cfg, num_heads=1))
    _same_count_and_tensors(_diffusers_model(dcfg), cfg, 121_063_942)
