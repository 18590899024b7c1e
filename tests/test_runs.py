"""runs.py: from a checkpoint to a LoadedRun (the owner of the model's facts) and to samples."""

import pytest
import torch

from ddpmkit.config import DiffusionSection
from ddpmkit.errors import UserError
from ddpmkit.networks.factory import config_to_dict, network_config
from ddpmkit.runs import (
    balanced_labels,
    build_model,
    build_process,
    derive_seed,
    generate,
    item_shape_of,
    load_run,
    resolve_checkpoint_path,
)
from ddpmkit.samplers import DEFAULT_STEPS
from ddpmkit.training.trainer import step_seed

T = 60


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    net = config_to_dict(network_config("mlp", "toy2d", hidden=16, num_layers=2))
    model = build_model(net, seed=0).eval()
    process = build_process(DiffusionSection(schedule="linear", timesteps=T))
    return model, process, net


def test_derive_seed_is_the_trainers_mixing_and_separates_positions():
    assert derive_seed(3, 0) == 3 * 1_000_003
    # the trainer's (step, stream) seeds are derive_seed at one offset per (step, stream)
    assert step_seed(7, 5, 2) == derive_seed(7, 5 * 9_176 + 2 * 7_919 + 12_345)
    seeds = {derive_seed(s, off) for s in range(5) for off in range(0, 1024, 256)}
    assert len(seeds) == 20 and all(0 <= v < 2**63 - 1 for v in seeds)
    assert derive_seed(-1, 0) >= 0  # negative seeds map into the generator's range


def test_item_shape_and_balanced_labels():
    assert item_shape_of({"kind": "mlp", "dim": 2}) == (2,)
    assert item_shape_of({"kind": "unet", "in_channels": 3, "image_size": 32}) == (3, 32, 32)
    assert balanced_labels(7, 3).tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert balanced_labels(7, None) is None


def test_loaded_run_owns_the_shipped_models_facts():
    run = load_run("pretrained:fashion-mnist")
    assert run.item_shape == (1, 28, 28) and run.is_image
    assert run.num_classes is None and run.balanced_labels(5) is None
    assert run.uses_ema and run.process.num_timesteps == run.config.diffusion.timesteps


def test_unknown_pretrained_name_and_bad_schedule_are_user_errors():
    with pytest.raises(UserError, match="no pretrained model 'nope'; available: fashion-mnist"):
        resolve_checkpoint_path("pretrained:nope")
    with pytest.raises(UserError, match=r"^\[diffusion\] "):
        build_process(DiffusionSection(schedule="cubic", timesteps=10))


def test_deterministic_samples_do_not_depend_on_the_batch_size(toy):
    model, process, _ = toy
    a = generate(model, process, 10, (2,), sampler="ddim", steps=8, seed=4, batch_size=10, clip_x0=False)
    b = generate(model, process, 10, (2,), sampler="ddim", steps=8, seed=4, batch_size=3, clip_x0=False)
    c = generate(model, process, 10, (2,), sampler="ddim", steps=8, seed=5, batch_size=3, clip_x0=False)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # float32 matmul rounding only
    assert a.shape == (10, 2) and not torch.allclose(a, c)


def test_ancestral_samples_are_reproducible_and_seeded_per_batch(toy):
    model, process, _ = toy
    kw = {"sampler": "ddpm", "steps": 5, "seed": 1, "clip_x0": False, "batch_size": 4}
    a, b = generate(model, process, 8, (2,), **kw), generate(model, process, 8, (2,), **kw)
    assert torch.equal(a, b)
    assert not torch.equal(a, generate(model, process, 8, (2,), **{**kw, "seed": 2}))


def test_default_steps_come_from_the_sampler(toy):
    model, process, _ = toy
    for sampler, expected in (("ddim", min(DEFAULT_STEPS, T)), ("ddpm", T), ("dpm++", min(DEFAULT_STEPS, T))):
        calls = []
        generate(model, process, 2, (2,), sampler=sampler, seed=0, callback=lambda *c, out=calls: out.append(c))
        assert len(calls) == expected, sampler


def test_sampler_options_are_passed_or_refused(toy):
    model, process, _ = toy
    kw = {"steps": 6, "seed": 0, "clip_x0": False}
    det = generate(model, process, 6, (2,), sampler="ddim", **kw)
    noisy = generate(model, process, 6, (2,), sampler="ddim", eta=1.0, **kw)
    assert not torch.allclose(det, noisy)  # eta reaches DDIM
    with pytest.raises(ValueError, match="sampler 'ddpm' takes no option 'eta'; its options: none"):
        generate(model, process, 2, (2,), sampler="ddpm", eta=1.0, **kw)
    with pytest.raises(ValueError, match="sampler 'dpm\\+\\+' takes no option 'eta'; its options: order"):
        generate(model, process, 2, (2,), sampler="dpm++", eta=0.0, **kw)


def test_guidance_needs_a_conditional_model(toy):
    model, process, _ = toy
    with pytest.raises(UserError, match="needs a class-conditional model"):
        generate(model, process, 2, (2,), sampler="ddim", steps=3, guidance=2.0, y=0)
