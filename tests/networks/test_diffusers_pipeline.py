"""diffusers pipelines in and out: our export sampled by diffusers' DDPMPipeline / DDIMScheduler gives
our samples from the same noise, and a diffusers pipeline directory is sampled by `ddpmkit sample`.

Every model here is randomly initialised and saved in a temp dir; nothing is downloaded.  The tests
that run diffusers skip (with the reason) only when the optional `interop` extra is missing.
(tests/networks/conftest.py runs them single-threaded.)
"""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from ddpmkit.cli import main
from ddpmkit.diffusers_pipeline import (
    diffusers_betas,
    process_from_scheduler_config,
    scheduler_config,
    write_diffusers_pipeline,
)
from ddpmkit.diffusion import GaussianDiffusion
from ddpmkit.errors import UserError
from ddpmkit.networks import UNet, UNetConfig, save_diffusers_unet
from ddpmkit.networks.convert_diffusers import diffusers_config_to_unet_config
from ddpmkit.runs import load_run, model_fn_of
from ddpmkit.samplers import SAMPLERS, sample
from ddpmkit.testing.diffusers_layouts import (
    GOOGLE_DDPM_CIFAR10_INDEX,
    GOOGLE_DDPM_CIFAR10_SCHEDULER,
    GOOGLE_DDPM_CIFAR10_UNET,
)

NEED_DIFFUSERS = "diffusers (the optional `interop` extra, installed by `make test`) is not installed"
T = 40


def tiny_unet(learn_sigma=False, num_classes=None, seed=0) -> UNet:
    cfg = UNetConfig(in_channels=3, image_size=8, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                     norm_groups=8, learn_sigma=learn_sigma, num_classes=num_classes, dropout=0.0)
    net = UNet(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # random, non-zero weights everywhere (conv_out is zero-initialised), outputs O(1)
        for name, p in net.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if name.startswith("conv_out") else 0.05))
    return net.eval()


def ours_vs_diffusers_noise(shape, seed=0):
    """The x_T and generator diffusers' DDPMPipeline uses: x_T first, then one draw per noisy step."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), g


CASES = [("linear", "fixed_small", "eps"), ("cosine", "fixed_large", "v"), ("sigmoid", "learned_range", "x0")]


@pytest.mark.parametrize(("schedule", "variance", "prediction"), CASES, ids=["-".join(c) for c in CASES])
@pytest.mark.parametrize("steps", [T, 8])
def test_ddpm_pipeline_on_our_export_gives_our_ddpm_samples(schedule, variance, prediction, steps, tmp_path):
    diffusers = pytest.importorskip("diffusers", reason=NEED_DIFFUSERS)
    net = tiny_unet(learn_sigma=variance == "learned_range")
    process = GaussianDiffusion.from_schedule(schedule, T, variance=variance, prediction=prediction)
    write_diffusers_pipeline(net, process, tmp_path / "pipe")
    pipe = diffusers.DDPMPipeline.from_pretrained(tmp_path / "pipe")
    assert (pipe.scheduler.betas.double().numpy() - process.betas.numpy()).__abs__().max() < 1e-7
    x_T, g = ours_vs_diffusers_noise((3, 3, 8, 8))
    ours = sample("ddpm", model_fn_of(net), process, x_T, steps=steps, spacing="leading", generator=g, clip_x0=True)
    theirs = pipe(batch_size=3, generator=torch.Generator().manual_seed(0), num_inference_steps=steps,
                  output_type="pt", return_dict=False)[0]
    ours01 = (ours / 2 + 0.5).clamp(0, 1)
    assert ((theirs > 0.02) & (theirs < 0.98)).float().mean() > 0.3 and theirs.std() > 0.05  # not a flat picture
    assert (ours01 - theirs).abs().max() < 2e-4


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_ddim_scheduler_on_our_export_gives_our_ddim_samples(prediction, tmp_path):
    diffusers = pytest.importorskip("diffusers", reason=NEED_DIFFUSERS)
    net = tiny_unet()
    process = GaussianDiffusion.from_schedule("cosine", T, prediction=prediction)
    write_diffusers_pipeline(net, process, tmp_path / "pipe")
    pipe = diffusers.DDPMPipeline.from_pretrained(tmp_path / "pipe")
    sched = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(10)
    x_T, _ = ours_vs_diffusers_noise((3, 3, 8, 8))
    x = x_T.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            out = pipe.unet(x, t).sample
            x = sched.step(out, t, x, eta=0.0, use_clipped_model_output=True).prev_sample
    ours = sample("ddim", model_fn_of(net), process, x_T, steps=10, spacing="leading", clip_x0=True)
    assert x.std() > 0.2
    assert (ours - x).abs().max() < 2e-4


def test_export_writes_the_diffusers_layout_and_refuses_what_has_no_equivalent(tmp_path):
    net, process = tiny_unet(), GaussianDiffusion.from_schedule("linear", 1000)
    out = write_diffusers_pipeline(net, process, tmp_path / "pipe")
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["model_index.json", "scheduler/scheduler_config.json", "unet/config.json",
                     "unet/diffusion_pytorch_model.safetensors"]
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in out.rglob("*") if p.is_file())
    sched = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    # Our linear schedule at T = 1000 is the DDPM paper's: written as diffusers' named schedule.
    assert (sched["beta_schedule"], sched["beta_start"], sched["beta_end"], sched["trained_betas"]) == (
        "linear", 1e-4, 0.02, None)
    assert (sched["variance_type"], sched["prediction_type"], sched["clip_sample"]) == ("fixed_small", "epsilon", True)
    assert json.loads((out / "model_index.json").read_text())["unet"] == ["diffusers", "UNet2DModel"]
    # Schedules diffusers cannot name are written as their betas; cosine as squaredcos_cap_v2.
    assert scheduler_config(GaussianDiffusion.from_schedule("cosine", 50))["beta_schedule"] == "squaredcos_cap_v2"
    sig = scheduler_config(GaussianDiffusion.from_schedule("sigmoid", 50))
    assert np.array_equal(diffusers_betas(sig), GaussianDiffusion.from_schedule("sigmoid", 50).betas.numpy())
    # Refusals name the setting; a non-empty directory is not touched.
    with pytest.raises(UserError, match="class-conditional"):
        write_diffusers_pipeline(tiny_unet(num_classes=3), process, tmp_path / "cond")
    with pytest.raises(UserError, match="not empty"):
        write_diffusers_pipeline(net, process, out)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="other than a diffusers pipeline export"):
        write_diffusers_pipeline(net, process, other, force=True)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    write_diffusers_pipeline(net, GaussianDiffusion.from_schedule("cosine", 1000), out, force=True)  # our own
    assert json.loads((out / "scheduler" / "scheduler_config.json").read_text())["beta_schedule"] == "squaredcos_cap_v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "pipe"]  # no temporary leftovers


@pytest.mark.parametrize(("key", "value", "match"), [
    ("thresholding", True, "thresholding"), ("rescale_betas_zero_snr", True, "rescale"),
    ("variance_type", "learned", "variance_type 'learned'"), ("prediction_type", "flow", "prediction_type"),
    ("beta_schedule", "laplace", "beta_schedule 'laplace'"), ("clip_sample_range", 2.0, "clip_sample_range"),
])
def test_diffusers_scheduler_settings_without_an_equivalent_are_refused(key, value, match):
    with pytest.raises(UserError, match=match):
        process_from_scheduler_config({**GOOGLE_DDPM_CIFAR10_SCHEDULER, key: value})


def write_google_layout(root, unet: UNet | None = None):
    """google/ddpm-cifar10-32's files: its three configs, random weights for its U-Net (or ``unet``'s)."""
    root.mkdir()
    (root / "model_index.json").write_text(json.dumps(GOOGLE_DDPM_CIFAR10_INDEX))
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(GOOGLE_DDPM_CIFAR10_SCHEDULER))
    if unet is None:
        torch.manual_seed(0)
        unet = UNet(diffusers_config_to_unet_config(GOOGLE_DDPM_CIFAR10_UNET))
    save_diffusers_unet(unet, root / "unet")
    return root


def test_google_ddpm_cifar10_layout_is_sampled_by_ddpmkit_sample(tmp_path, capsys):
    root = write_google_layout(tmp_path / "ddpm-cifar10-32")
    assert json.loads((root / "unet" / "config.json").read_text())["block_out_channels"] == [128, 256, 256, 256]
    run = load_run(root)
    assert (run.config.diffusion.schedule, run.config.diffusion.timesteps, run.process.variance,
            run.process.prediction, run.item_shape) == ("linear", 1000, "fixed_small", "eps", (3, 32, 32))
    assert sum(p.numel() for p in run.model.parameters()) == 35_746_307
    assert not run.model.training
    out = tmp_path / "s.png"
    assert main(["sample", "--checkpoint", f"diffusers:{root}", "--sampler", "ddim", "--steps", "2", "-n", "2",
                 "--out", str(out), "--no-progress"]) == 0
    assert Image.open(out).size[0] > 2 * 32
    assert main(["info", str(root)]) == 0
    assert "diffusion    linear T=1000 prediction=eps variance=fixed_small" in capsys.readouterr().out


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_runs_on_a_diffusers_directory_like_on_the_same_model_here(sampler, tmp_path):
    net = tiny_unet()
    process = GaussianDiffusion.from_schedule("linear", T)
    pipe = write_diffusers_pipeline(net, process, tmp_path / "pipe")
    npy = tmp_path / "x.npy"
    assert main(["sample", "--checkpoint", str(pipe), "--sampler", sampler, "--steps", "5", "-n", "3", "--seed", "4",
                 "--out", str(tmp_path / "x.png"), "--npy", str(npy), "--no-progress"]) == 0
    from ddpmkit.runs import generate

    expected = generate(net, process, 3, (3, 8, 8), sampler=sampler, steps=5, seed=4, clip_x0=True)
    assert np.allclose(np.load(npy), expected.numpy(), atol=1e-6)


def test_diffusers_prefix_on_a_directory_without_a_pipeline_is_one_error_line(tmp_path, capsys):
    assert main(["sample", "--checkpoint", f"diffusers:{tmp_path}", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ddpmkit: error:") and "model_index.json" in err and len(err.splitlines()) == 1
    assert os.listdir(tmp_path) == []


def test_cli_export_diffusers_from_a_run_round_trips_through_load_run(tiny_run, tmp_path):
    diffusers = pytest.importorskip("diffusers", reason=NEED_DIFFUSERS)
    out = tmp_path / "pipe"
    assert main(["export", str(tiny_run), "--diffusers", "--out", str(out)]) == 0
    ours, back = load_run(tiny_run), load_run(out)
    for k, v in ours.model.state_dict().items():
        assert torch.equal(v, back.model.state_dict()[k]), k
    assert torch.equal(ours.process.betas, back.process.betas)
    pipe = diffusers.DDPMPipeline.from_pretrained(out)
    assert pipe.unet.config.in_channels == ours.item_shape[0] and pipe.scheduler.config.num_train_timesteps == 20
