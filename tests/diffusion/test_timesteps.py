import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ddpmkit import GaussianDiffusion, LossSecondMomentSampler, UniformSampler, respace, respaced, space_timesteps
from ddpmkit.diffusion.timesteps import make_timestep_sampler


def test_uniform_sampler_covers_range_with_unit_weights():
    t, w = UniformSampler(7).sample(5000, generator=torch.Generator().manual_seed(0))
    assert set(t.tolist()) == set(range(7)) and torch.all(w == 1)


def test_importance_sampler_is_uniform_until_every_step_has_full_history():
    s = LossSecondMomentSampler(4, history=3)
    for _ in range(3):
        s.update(torch.tensor([0, 1, 2]), torch.tensor([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(s.probabilities(), 0.25)
    s.update(torch.tensor([3, 3]), torch.tensor([4.0, 4.0]))
    assert not s.warmed_up()
    s.update(torch.tensor([3]), torch.tensor([4.0]))
    assert s.warmed_up()


def test_importance_sampler_weights_follow_second_moment_and_keep_loss_unbiased():
    T, u = 5, 0.001
    s = LossSecondMomentSampler(T, history=10, uniform_prob=u)
    rng = np.random.default_rng(0)
    losses = rng.uniform(0.5, 2.0, size=(T, 12)) * np.arange(1, T + 1)[:, None]
    for k in range(12):
        s.update(torch.arange(T), torch.from_numpy(losses[:, k]))
    kept = losses[:, 2:]  # the last 10 per step
    w = np.sqrt((kept**2).mean(1))
    expected = w / w.sum() * (1 - u) + u / T
    np.testing.assert_allclose(s.probabilities(), expected, rtol=1e-12)
    # E_p[weight * L_t] = (1/T) sum_t L_t exactly, since weight = 1 / (T p_t)
    p = s.probabilities()
    L = kept.mean(1)
    assert (p * (1 / (T * p)) * L).sum() == pytest.approx(L.mean(), rel=1e-12)
    t, weights = s.sample(20000, generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(weights.numpy(), 1 / (T * p[t.numpy()]), rtol=1e-6)
    freq = np.bincount(t.numpy(), minlength=T) / 20000
    np.testing.assert_allclose(freq, p, atol=5 * np.sqrt(p * (1 - p) / 20000).max())


def test_importance_sampler_state_round_trip():
    s = LossSecondMomentSampler(3, history=2)
    s.update(torch.tensor([0, 1, 2, 0]), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    s2 = LossSecondMomentSampler(3, history=2)
    s2.load_state_dict(s.state_dict())
    np.testing.assert_array_equal(s2.loss_history, s.loss_history)
    np.testing.assert_array_equal(s2.loss_counts, s.loss_counts)
    with pytest.raises(ValueError, match="valid: uniform, loss-second-moment"):
        make_timestep_sampler("importance", 10)


def test_space_timesteps_specs():
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(1000, 10) == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    assert space_timesteps(1000, "10") == space_timesteps(1000, 10)
    kept = space_timesteps(300, [10, 15, 20])
    assert len(kept) == 45 and kept[0] == 0 and kept[-1] == 299
    assert kept[9] == 99 and kept[10] == 100 and kept[24] == 199
    assert space_timesteps(300, "10,15,20") == kept
    assert space_timesteps(10, 1) == [0]


@pytest.mark.parametrize("spec,match", [("ddim0", "allowed 1..1000"), ("ddimx", "integer N"),
                                        ("ddim999", "fixed stride"), (1001, "allowed 1..1000"),
                                        ("fast", "expected"), ([5, 501], r"allowed 1\.\.500")])
def test_space_timesteps_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        space_timesteps(1000, spec)


@settings(max_examples=25, deadline=None)
@given(T=st.integers(1, 300), schedule=st.sampled_from(["linear", "cosine", "sigmoid", "quadratic"]))
def test_respacing_with_every_step_kept_is_the_original_process(T, schedule):
    proc = GaussianDiffusion.from_schedule(schedule, T)
    same = respace(proc, range(T))
    for name, buf in proc.named_buffers():
        torch.testing.assert_close(getattr(same, name), buf, rtol=1e-12, atol=1e-15, msg=name)


def test_respaced_process_keeps_the_marginals_and_maps_back():
    proc = GaussianDiffusion.from_schedule("cosine", 1000, variance="learned_range", prediction="v")
    r = respaced(proc, "ddim50")
    kept = torch.arange(0, 1000, 20)
    assert r.num_timesteps == 50 and r.variance == "learned_range" and r.prediction == "v"
    torch.testing.assert_close(r.alphas_cumprod, proc.alphas_cumprod[kept], rtol=1e-12, atol=0)
    assert torch.equal(r.network_t(torch.tensor([0, 1, 49])), torch.tensor([0, 20, 980]))
    twice = respace(r, [0, 10, 49])  # respacing a respaced process composes the maps
    assert torch.equal(twice.timestep_map, torch.tensor([0, 200, 980]))
    torch.testing.assert_close(twice.alphas_cumprod, proc.alphas_cumprod[[0, 200, 980]], rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="0..999"):
        respace(proc, [5, 1000])


# --- the log-normal (EDM) sampler ---------------------------------------------------------------

def test_nearest_log_snr_step_is_the_argmin():
    from ddpmkit.diffusion.timesteps import log_snr_of, nearest_log_snr_step

    table = log_snr_of(GaussianDiffusion.from_schedule("linear", 200).alphas_cumprod)
    assert torch.all(table[1:] < table[:-1])
    values = torch.cat([torch.linspace(-15, 15, 2001, dtype=torch.float64), table, table[[0, -1]] + torch.tensor(
        [1.0, -1.0], dtype=torch.float64)])
    got = nearest_log_snr_step(table, values)
    brute = (table[None, :] - values[:, None]).abs().argmin(dim=1)
    close = (table[got] - values).abs()
    assert torch.all(close <= (table[brute] - values).abs() + 1e-12)   # as near as the argmin (ties aside)
    assert torch.equal(got[2001:2201], torch.arange(200))              # each table entry maps to its own step
    assert got[-2] == 0 and got[-1] == 199                             # beyond the ends: the end steps


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_lognormal_sampler_draws_edm_noise_levels(schedule):
    from ddpmkit.diffusion.timesteps import LogNormalSampler, log_snr_of

    process = GaussianDiffusion.from_schedule(schedule, 1000)
    s = make_timestep_sampler("lognormal", 1000, alphas_cumprod=process.alphas_cumprod, mean=-1.2, std=1.2)
    assert isinstance(s, LogNormalSampler)
    n = 200_000
    t, w = s.sample(n, generator=torch.Generator().manual_seed(3))
    t2, _ = s.sample(n, generator=torch.Generator().manual_seed(3))
    assert torch.equal(t, t2) and torch.all(w == 1)                    # a function of the generator only
    assert t.dtype == torch.long and 0 <= int(t.min()) and int(t.max()) <= 999
    p = s.probabilities()
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    freq = np.bincount(t.numpy(), minlength=1000) / n
    assert np.abs(freq - p).max() < 5 * np.sqrt(p.max() / n)
    log_snr = log_snr_of(process.alphas_cumprod)
    exact_mean = float((torch.from_numpy(p) * log_snr).sum())
    drawn = log_snr[t]
    assert float(drawn.mean()) == pytest.approx(exact_mean, abs=5 * float(drawn.std()) / np.sqrt(n))
    # EDM's ln sigma ~ N(-1.2, 1.2^2) is log SNR ~ N(2.4, 2.4^2): nearly so on the discrete steps
    assert exact_mean == pytest.approx(2.4, abs=0.05)
    assert float(drawn.std()) == pytest.approx(2.4, abs=0.05)


def test_lognormal_sampler_checks_its_inputs():
    with pytest.raises(TypeError):
        make_timestep_sampler("lognormal", 10)                          # needs the schedule
    with pytest.raises(ValueError, match="one entry per step"):
        make_timestep_sampler("lognormal", 10, alphas_cumprod=np.linspace(0.9, 0.1, 9))
    with pytest.raises(ValueError, match="std must be > 0"):
        make_timestep_sampler("lognormal", 10, alphas_cumprod=np.linspace(0.9, 0.1, 10), std=0.0)
