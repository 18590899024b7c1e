"""The samplers' shared contract: errors, registry, seeds, callbacks, clipping, spacings, guidance."""

import functools

import numpy as np
import pytest
import torch

from ddpmkit import GaussianDiffusion
from ddpmkit.samplers import (
    SAMPLERS,
    SPACINGS,
    ddim_invert,
    ddim_sample,
    get_sampler,
    guided_model_fn,
    network_evaluations,
    sample,
    sampling_timesteps,
    steps_for_nfe,
)
from ddpmkit.testing import circle_mixture

T = 100


@pytest.fixture(scope="module")
def proc():
    return GaussianDiffusion.from_schedule("linear", T)


@pytest.fixture(scope="module")
def mix():
    return circle_mixture()


def zero_model(x, t, y=None):
    return torch.zeros_like(x)


# --- errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("steps", [0, -3, T + 1])
def test_bad_steps(proc, name, steps):
    with pytest.raises(ValueError, match=rf"steps must be in 1\.\.{T}"):
        sample(name, zero_model, proc, (2, 2), steps=steps)


def test_bad_eta_spacing_sampler_order(proc):
    with pytest.raises(ValueError, match="eta must be .*>= 0"):
        ddim_sample(zero_model, proc, (2, 2), eta=-0.1)
    with pytest.raises(ValueError, match="unknown spacing 'cubic'; valid spacings: uniform, leading"):
        sample("dpm++", zero_model, proc, (2, 2), steps=5, spacing="cubic")
    msg = r"unknown sampler 'euler'; valid samplers: ddpm, ddim, dpm\+\+, heun"
    with pytest.raises(ValueError, match=msg):
        get_sampler("euler")
    with pytest.raises(ValueError, match="order must be 1, 2 or 3"):
        sample("dpm++", zero_model, proc, (2, 2), order=4)
    with pytest.raises(ValueError, match="strictly increasing"):
        sample("ddim", zero_model, proc, (2, 2), steps=[0, 50, 50])
    with pytest.raises(ValueError, match="strictly increasing sequence in 0..99"):
        sample("ddim", zero_model, proc, (2, 2), steps=[0, 100])


def test_guidance_needs_a_conditional_model_and_labels(proc, mix):
    with pytest.raises(ValueError, match="guidance needs a class-conditional model"):
        sample("ddim", zero_model, proc, (2, 2), steps=3, guidance=2.0, y=0)
    uncond = mix.model_fn(proc)
    with pytest.raises(ValueError, match="guidance needs a class-conditional model"):
        sample("ddim", uncond, proc, (2, 2), steps=3, guidance=2.0, y=0)
    cond = mix.model_fn(proc, conditional=True)
    with pytest.raises(ValueError, match="needs class labels y"):
        sample("ddim", cond, proc, (2, 2), steps=3, guidance=2.0)
    with pytest.raises(ValueError, match=r"labels must be in 0..7 \(or 8 = null\)"):
        sample("ddim", cond, proc, (2, 2), steps=3, guidance=2.0, y=9)
    # explicit num_classes= makes a plain function usable; a label-blind model guided is itself
    kw = {"steps": 3, "generator": torch.Generator().manual_seed(0)}
    guided = sample("ddim", zero_model, proc, (2, 2), guidance=2.0, y=1, num_classes=4, **kw)
    kw["generator"] = torch.Generator().manual_seed(0)
    assert torch.equal(guided, sample("ddim", zero_model, proc, (2, 2), **kw))


# --- registry, NFE, reproducibility, callbacks ---------------------------------------------------

def test_registry_and_nfe():
    assert set(SAMPLERS) == {"ddpm", "ddim", "dpm++", "heun"}
    assert network_evaluations("heun", 5) == 9 and network_evaluations("dpm++", 5) == 5
    assert steps_for_nfe("heun", 10) == 5 and steps_for_nfe("ddim", 10) == 10


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_same_seed_same_output_and_callback(proc, mix, name):
    fn = mix.model_fn(proc)
    calls = []
    nfe = []

    def counting(x, t, y=None):
        nfe.append(1)
        return fn(x, t)

    kw = {"eta": 1.0} if name == "ddim" else {}
    a = sample(name, counting, proc, (64, 2), steps=7, generator=torch.Generator().manual_seed(0),
               callback=lambda *c: calls.append(c), **kw)
    b = sample(name, fn, proc, (64, 2), steps=7, generator=torch.Generator().manual_seed(0), **kw)
    c = sample(name, fn, proc, (64, 2), steps=7, generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (64, 2) and a.dtype == torch.float32 and torch.isfinite(a).all()
    spacing = {"dpm++": "logsnr", "heun": "karras"}.get(name, "uniform")
    grid = sampling_timesteps(proc, 7, spacing)
    assert [s for s, *_ in calls] == list(range(7))
    assert [t for _, t, *_ in calls] == grid[::-1]
    assert all(x.shape == (64, 2) and x0.shape == (64, 2) for _, _, x, x0 in calls)
    assert len(nfe) == network_evaluations(name, 7)


def test_passed_in_x_T_is_used_and_not_modified(proc, mix):
    fn = mix.model_fn(proc)
    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(3))
    keep = x_T.clone()
    a = ddim_sample(fn, proc, x_T, steps=10)
    b = ddim_sample(fn, proc, x_T.clone(), steps=10)
    assert torch.equal(a, b) and torch.equal(x_T, keep)
    assert ddim_sample(fn, proc, x_T, steps=10, dtype=torch.float64).dtype == torch.float64


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_progress_bar_counts_the_steps(proc, capsys, name):
    sample(name, zero_model, proc, (2, 2), steps=3, progress=True)
    frames = capsys.readouterr().err.strip().split("\r")  # tqdm redraws one line on stderr
    assert all(f.startswith(f"{name}:") for f in frames)
    assert "0/3" in frames[0] and "3/3" in frames[-1] and "100%" in frames[-1]
    sample(name, zero_model, proc, (2, 2), steps=3)
    assert capsys.readouterr().err == ""  # no bar unless asked


def test_unknown_sampler_options_are_errors(proc):
    with pytest.raises(ValueError, match="sampler 'ddpm' takes no option 'eta'; its options: none"):
        sample("ddpm", zero_model, proc, (2, 2), steps=3, eta=1.0)
    with pytest.raises(ValueError, match="sampler 'ddim' takes no option 'order'; its options: eta"):
        sample("ddim", zero_model, proc, (2, 2), steps=3, order=2)
    with pytest.raises(ValueError, match="sampler 'ddim-invert' takes no option 'eta'"):
        ddim_invert(zero_model, proc, torch.zeros(2, 2), eta=0.5)


def test_network_receives_original_time_indices(proc):
    seen = []

    def model(x, t, y=None):
        seen.append(int(t[0]))
        return torch.zeros_like(x)

    sample("ddpm", model, proc, (2, 2), steps=[3, 40, 99])
    assert seen == [99, 40, 3]


# --- clipping -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpm++", "heun"])
def test_clip_x0_keeps_predictions_in_range(name):
    p = GaussianDiffusion.from_schedule("linear", T, prediction="x0")

    def wild(x, t, y=None):  # predicts x0 far outside [-1, 1]
        return 5.0 * torch.sign(x) + x

    preds = []
    out = sample(name, wild, p, (32, 3), steps=10, clip_x0=True, generator=torch.Generator().manual_seed(0),
                 callback=lambda s, t, x, x0: preds.append(x0))
    assert all(x0.abs().max() <= 1.0 for x0 in preds)
    assert out.abs().max() <= 1.0 + 1e-6
    unclipped = sample(name, wild, p, (32, 3), steps=10, generator=torch.Generator().manual_seed(0))
    assert unclipped.abs().max() > 2.0


# --- spacings -------------------------------------------------------------------------------------

@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("n", [1, 2, 5, 50, 99, 100])
def test_spacings_give_n_distinct_increasing_indices(proc, spacing, n):
    ts = sampling_timesteps(proc, n, spacing)
    assert len(ts) == n and all(b > a for a, b in zip(ts[:-1], ts[1:], strict=True))
    assert 0 <= ts[0] and ts[-1] <= T - 1
    if spacing != "leading":
        assert ts[-1] == T - 1
        assert n == 1 or ts[0] == 0


def test_logsnr_and_karras_spacings_follow_their_variable():
    p = GaussianDiffusion.from_schedule("linear", 1000)
    abar = p.alphas_cumprod.numpy()
    lam = 0.5 * np.log(abar / (1 - abar))
    ts = sampling_timesteps(p, 10, "logsnr")
    gaps = np.diff(lam[ts])
    assert np.allclose(gaps, gaps.mean(), rtol=0.25)  # snapped to the grid, so roughly equal
    ks = sampling_timesteps(p, 10, "karras")
    sig = np.sqrt((1 - abar) / abar)[ks]
    r = sig ** (1 / 7)
    assert np.allclose(np.diff(r), np.diff(r).mean(), rtol=0.25)
    assert sampling_timesteps(p, 50, "leading") == list(range(0, 1000, 20))


# --- guidance -------------------------------------------------------------------------------------

def labelled_model(x, t, y=None):
    """Output depends on the label in a known way: out = x * (1 + y)."""
    y = torch.full((x.shape[0],), 3) if y is None else y
    return x * (1.0 + y.to(x.dtype)).reshape(-1, *([1] * (x.ndim - 1)))


labelled_model.num_classes = 3


def test_guided_model_formula():
    x = torch.randn(4, 2, 5, 5)
    t = torch.full((4,), 7)
    y = torch.tensor([0, 1, 2, 1])
    for w in (0.0, 1.0, 2.5):
        g = guided_model_fn(labelled_model, y, w, null_label=3)
        cond = labelled_model(x, t, y)
        null = labelled_model(x, t, torch.full((4,), 3))
        torch.testing.assert_close(g(x, t), null + w * (cond - null))


def test_guided_model_keeps_conditional_variance_channels():
    def model(x, t, y=None):
        return torch.cat([labelled_model(x, t, y), 10.0 + labelled_model(x, t, y)], dim=1)

    x, t, y = torch.randn(3, 2, 4, 4), torch.zeros(3, dtype=torch.long), torch.tensor([0, 1, 2])
    out = guided_model_fn(model, y, 3.0, 3, learned_variance=True)(x, t)
    full_cond, full_null = model(x, t, y), model(x, t, torch.full((3,), 3))
    torch.testing.assert_close(out[:, 2:], full_cond[:, 2:])
    torch.testing.assert_close(out[:, :2], full_null[:, :2] + 3.0 * (full_cond[:, :2] - full_null[:, :2]))


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_guidance_in_prediction_space_equals_guidance_in_eps_space(prediction, mix):
    p = GaussianDiffusion.from_schedule("cosine", T, prediction=prediction)
    fn = mix.model_fn(p, conditional=True)
    x = torch.randn(50, 2, dtype=torch.float64)
    t = torch.full((50,), 40)
    y = torch.randint(0, 8, (50,), generator=torch.Generator().manual_seed(0))
    w = 3.0
    eps = lambda out: p.p_mean_variance(out, x, t).eps  # noqa: E731
    guided = eps(guided_model_fn(fn, y, w, 8)(x, t))
    e_c, e_n = eps(fn(x, t, y)), eps(fn(x, t, torch.full((50,), 8)))
    torch.testing.assert_close(guided, e_n + w * (e_c - e_n))


def test_guidance_w1_samples_the_conditional(proc, mix):
    """With the exact conditional mixture, w = 1 is the conditional model: all samples land on mode k;
    w = 0 is the unconditional mixture."""
    p = GaussianDiffusion.from_schedule("linear", 1000)
    fn = mix.model_fn(p, conditional=True)
    x = sample("dpm++", fn, p, (400, 2), steps=20, guidance=1.0, y=5,
               generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert (mix.responsibilities(x).argmax(1) == 5).float().mean() > 0.97
    torch.testing.assert_close(x.mean(0), mix.means[5], atol=0.03, rtol=0)
    x0 = sample("dpm++", fn, p, (400, 2), steps=20, guidance=0.0, y=5,
                generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert len(torch.unique(mix.responsibilities(x0).argmax(1))) == 8
    # a module-like object exposing config.num_classes is recognised too; a wrapper that hides the
    # classes (a functools.partial) must say them: the front door does not dig through wrappers
    config = type("C", (), {"num_classes": 8})()
    holder = type("M", (), {"config": config, "__call__": lambda s, *a, **k: fn(*a, **k)})()
    a = sample("ddim", holder, p, (4, 2), steps=3, guidance=2.0, y=1, dtype=torch.float64,
               generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="guidance needs a class-conditional model"):
        sample("ddim", functools.partial(fn), p, (4, 2), steps=3, guidance=2.0, y=1)
    b = sample("ddim", functools.partial(fn), p, (4, 2), steps=3, guidance=2.0, y=1, num_classes=8,
               dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


def test_labels_pass_through_without_guidance(mix):
    p = GaussianDiffusion.from_schedule("linear", 1000)
    fn = mix.model_fn(p, conditional=True)
    x = sample("ddim", fn, p, (200, 2), steps=20, spacing="quadratic", y=torch.full((200,), 2),
               generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert (mix.responsibilities(x).argmax(1) == 2).float().mean() > 0.97


def test_ddim_invert_shapes(proc, mix):
    fn = mix.model_fn(proc)
    x0 = mix.sample(8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="fixed_point_iters"):
        ddim_invert(fn, proc, x0, fixed_point_iters=-1)
    assert ddim_invert(fn, proc, x0, steps=5).shape == x0.shape


def test_a_new_sampler_is_one_loop_and_one_registry_line(proc, mix, monkeypatch):
    """Register a 5-line deterministic DDIM loop: the front door gives it the grid, x_T, the callback
    and option checking, and it reproduces ddim (eta = 0) exactly."""
    import math

    from ddpmkit.samplers import Sampler
    from ddpmkit.samplers.common import abar_list

    def my_loop(predict, process, x, *, generator, callback, scale=1.0):
        abar, n = abar_list(process), process.num_timesteps
        for step in range(n):
            i = n - 1 - step
            pred = predict(x, i)
            callback(step, i, x, pred.x0)
            a_prev = abar[i - 1] if i > 0 else 1.0
            x = math.sqrt(a_prev) * pred.x0 + scale * math.sqrt(1.0 - a_prev) * pred.eps
        return x

    monkeypatch.setitem(SAMPLERS, "mine", Sampler(my_loop, spacing="quadratic"))
    fn = mix.model_fn(proc)
    calls = []
    a = sample("mine", fn, proc, (32, 2), steps=6, generator=torch.Generator().manual_seed(0),
               callback=lambda *c: calls.append(c[1]))
    b = sample("ddim", fn, proc, (32, 2), steps=6, spacing="quadratic", generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert calls == sampling_timesteps(proc, 6, "quadratic")[::-1] and network_evaluations("mine", 6) == 6
    with pytest.raises(ValueError, match="sampler 'mine' takes no option 'eta'; its options: scale"):
        sample("mine", fn, proc, (2, 2), steps=3, eta=0.0)
    from ddpmkit.cli import build_parser

    args = build_parser().parse_args(["sample", "--checkpoint", "c", "--out", "o", "--sampler", "mine"])
    assert args.sampler == "mine"  # the CLI's --sampler choices come from the registry
