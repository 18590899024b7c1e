import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ddpmkit import GaussianDiffusion
from ddpmkit.diffusion import parameterization as P
from ddpmkit.diffusion import schedules
from ddpmkit.diffusion.losses import prior_bpd, vlb_term
from ddpmkit.diffusion.process import model_output_to_prediction


@pytest.fixture(scope="module")
def proc():
    return GaussianDiffusion.from_schedule("linear", 1000).double()


def _moment_check(samples: torch.Tensor, mean: float, var: float, z: float = 5.0):
    """Sample mean and variance agree with (mean, var) within z standard errors."""
    n = samples.numel()
    assert abs(samples.mean().item() - mean) < z * math.sqrt(var / n)
    assert abs(samples.var().item() - var) < z * var * math.sqrt(2.0 / (n - 1))


def test_index_zero_means_one_step_of_noise(proc):
    noise = torch.randn(3, 5, dtype=torch.float64)
    x = proc.q_sample(torch.zeros(3, 5, dtype=torch.float64), 0, noise)
    torch.testing.assert_close(x, math.sqrt(proc.betas[0].item()) * noise, rtol=1e-12, atol=0)


@pytest.mark.parametrize("t", [0, 99, 500, 999])
def test_q_sample_marginal_moments_for_gaussian_data(proc, t):
    g = torch.Generator().manual_seed(t)
    mu, sd, n = 0.7, 0.4, 200_000
    x0 = mu + sd * torch.randn(n, 1, generator=g, dtype=torch.float64)
    xt = proc.q_sample(x0, t, generator=g)
    abar = proc.alphas_cumprod[t].item()
    _moment_check(xt, math.sqrt(abar) * mu, abar * sd**2 + 1 - abar)


@pytest.mark.parametrize("t", [0, 10, 300])
def test_q_step_repeated_equals_q_sample_in_distribution(proc, t):
    g = torch.Generator().manual_seed(123 + t)
    mu, sd, n = -0.5, 0.3, 100_000
    x0 = mu + sd * torch.randn(n, 1, generator=g, dtype=torch.float64)
    x = x0
    for k in range(t + 1):
        x = proc.q_step(x, k, generator=g)
    direct = proc.q_sample(x0, t, generator=g)
    abar = proc.alphas_cumprod[t].item()
    mean, var = math.sqrt(abar) * mu, abar * sd**2 + 1 - abar
    _moment_check(x, mean, var)
    _moment_check(direct, mean, var)
    # conditional on x0 the chain is linear-Gaussian: residual after removing sqrt(abar) x0
    _moment_check(x - math.sqrt(abar) * x0, 0.0, 1 - abar)


def test_posterior_equals_gaussian_conditioning(proc):
    """q(x_{t-1} | x_t, x0) from Bayes' rule on the joint of (x_{t-1}, x_t) given x0."""
    g = torch.Generator().manual_seed(0)
    T = proc.num_timesteps
    t = torch.arange(1, T)
    x0 = torch.randn(T - 1, 1, generator=g, dtype=torch.float64)
    xt = torch.randn(T - 1, 1, generator=g, dtype=torch.float64)
    betas = torch.from_numpy(schedules.linear(T))
    abar = torch.cumprod(1 - betas, 0)
    ab_prev, a_t, b_t = abar[t - 1].view(-1, 1), (1 - betas[t]).view(-1, 1), betas[t].view(-1, 1)
    # x_{t-1} ~ N(sqrt(ab_prev) x0, 1 - ab_prev);  x_t = sqrt(a_t) x_{t-1} + sqrt(b_t) z
    m1, v1 = ab_prev.sqrt() * x0, 1 - ab_prev
    m2, v2, c12 = a_t.sqrt() * m1, a_t * v1 + b_t, a_t.sqrt() * v1
    cond_mean = m1 + c12 / v2 * (xt - m2)
    cond_var = v1 - c12**2 / v2
    mean, var, log_var = proc.q_posterior(x0, xt, t)
    torch.testing.assert_close(mean, cond_mean, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(var, cond_var, rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(log_var, cond_var.log(), rtol=1e-9, atol=1e-12)


def test_posterior_at_index_zero_is_x0_with_clipped_log_variance(proc):
    x0, xt = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    mean, var, log_var = proc.q_posterior(x0, xt, 0)
    torch.testing.assert_close(mean, x0)
    assert torch.all(var == 0)
    torch.testing.assert_close(log_var, torch.full_like(x0, proc.posterior_variance[1].log().item()))


finite = st.floats(-3, 3, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(t=st.integers(0, 999), x=st.lists(finite, min_size=4, max_size=4),
       e=st.lists(finite, min_size=4, max_size=4),
       schedule=st.sampled_from(["linear", "cosine", "sigmoid", "quadratic"]))
def test_round_trips_eps_x0_v(t, x, e, schedule):
    proc = GaussianDiffusion.from_schedule(schedule, 1000).double()
    x0 = torch.tensor([x], dtype=torch.float64)
    eps = torch.tensor([e], dtype=torch.float64)
    tt = torch.tensor([t])
    xt = proc.q_sample(x0, tt, eps)
    a = proc.extract(proc.sqrt_alphas_cumprod, tt, xt)
    s = proc.extract(proc.sqrt_one_minus_alphas_cumprod, tt, xt)
    x0_back = P.x0_from_eps(xt, eps, a, s)
    # x0 = (x_t - s eps) / a loses precision where a is tiny: compare on the x_t scale.
    torch.testing.assert_close(a * x0_back, a * x0, rtol=0, atol=1e-9)
    torch.testing.assert_close(P.eps_from_x0(xt, x0, a, s), eps, rtol=0, atol=1e-9 / s.min().item())
    v = P.v_from_x0_eps(x0, eps, a, s)
    torch.testing.assert_close(P.x0_from_v(xt, v, a, s), x0, rtol=0, atol=1e-9)
    torch.testing.assert_close(P.eps_from_v(xt, v, a, s), eps, rtol=0, atol=1e-9)


def test_eps_mean_equals_ho_algorithm_2(proc):
    g = torch.Generator().manual_seed(1)
    xt = torch.randn(8, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(8, 3, generator=g, dtype=torch.float64)
    t = torch.randint(1, 1000, (8,), generator=g)
    pred = proc.p_mean_variance(eps, xt, t)
    a_t = (1 - proc.betas[t]).view(-1, 1)
    ab_t = proc.alphas_cumprod[t].view(-1, 1)
    ho = (xt - (1 - a_t) / (1 - ab_t).sqrt() * eps) / a_t.sqrt()
    torch.testing.assert_close(pred.mean, ho, rtol=1e-9, atol=1e-12)


def test_all_predictions_agree_given_the_truth(proc):
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(6, 2, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(6, 2, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 10, 200, 700, 999])
    xt = proc.q_sample(x0, t, eps)
    a = proc.extract(proc.sqrt_alphas_cumprod, t, xt)
    s = proc.extract(proc.sqrt_one_minus_alphas_cumprod, t, xt)
    outs = {"eps": eps, "x0": x0, "v": P.v_from_x0_eps(x0, eps, a, s)}
    preds = {k: model_output_to_prediction(proc, o, xt, t, prediction=k) for k, o in outs.items()}
    for k in ("x0", "v"):
        for field in ("x0", "eps", "mean", "log_var"):
            torch.testing.assert_close(getattr(preds[k], field), getattr(preds["eps"], field),
                                       rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(preds["eps"].x0[:5], x0[:5], rtol=1e-9, atol=1e-9)


def test_variance_types(proc):
    xt = torch.randn(3, 2, dtype=torch.float64)
    t = torch.tensor([0, 5, 999])
    eps = torch.randn(3, 2, dtype=torch.float64)
    small = proc.p_mean_variance(eps, xt, t).log_var
    large = model_output_to_prediction(proc, eps, xt, t, variance="fixed_large").log_var
    torch.testing.assert_close(small[:, 0], proc.posterior_log_variance_clipped[t])
    torch.testing.assert_close(large[1:, 0], proc.betas[t[1:]].log())
    torch.testing.assert_close(large[0, 0], proc.posterior_variance[1].log())
    for v, expected in ((-1.0, small), (1.0, torch.log(proc.betas[t]).view(-1, 1).expand(3, 2))):
        out = torch.cat([eps, torch.full_like(eps, v)], 1)
        got = model_output_to_prediction(proc, out, xt, t, variance="learned_range").log_var
        torch.testing.assert_close(got, expected)


def test_clip_x0_clamps_and_keeps_eps_consistent(proc):
    xt = 5 * torch.randn(16, 3, dtype=torch.float64)
    t = torch.full((16,), 10)
    pred = proc.p_mean_variance(torch.zeros_like(xt), xt, t, clip_x0=True)
    assert pred.x0.abs().max() <= 1.0
    torch.testing.assert_close(proc.q_sample(pred.x0, t, pred.eps), xt)


def test_clear_errors_for_bad_input(proc):
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="valid choices: eps, x0, v, mean"):
        GaussianDiffusion([0.1], prediction="noise")
    with pytest.raises(ValueError, match="fixed_small, fixed_large, learned_range, learned"):
        GaussianDiffusion([0.1], variance="learnt")
    with pytest.raises(ValueError, match=r"allowed 0\.\.999"):
        proc.q_sample(x, 1000)
    with pytest.raises(ValueError, match=r"allowed 0\.\.999"):
        proc.q_sample(x, torch.tensor([-1, 0]))
    with pytest.raises(TypeError, match="integer step indices"):
        proc.q_sample(x, torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        proc.q_sample(x, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="noise shape"):
        proc.q_sample(x, 1, noise=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="x0 shape"):
        proc.q_posterior(torch.zeros(2, 4), x, 1)
    learned = GaussianDiffusion(schedules.linear(10), variance="learned_range")
    with pytest.raises(ValueError, match="2\\*3 = 6 channels"):
        learned.p_mean_variance(torch.zeros(2, 3), x, 1)
    with pytest.raises(ValueError, match="must equal x_t's shape"):
        proc.p_mean_variance(torch.zeros(2, 6), x, 1)


@pytest.mark.parametrize("T", [1, 10, 1000, 4000])
@pytest.mark.parametrize("schedule", ["linear", "cosine", "sigmoid", "quadratic"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_everything_finite(T, schedule, dtype):
    proc = GaussianDiffusion.from_schedule(schedule, T)
    for name, buf in proc.named_buffers():
        assert torch.isfinite(buf.double()).all(), name
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 1, 4, 4, generator=g, dtype=dtype) * 2 - 1
    x0 = torch.round((x0 + 1) * 127.5) / 127.5 - 1
    for t in sorted({0, T // 2, T - 1}):
        xt = proc.q_sample(x0, t, generator=g)
        out = torch.randn(x0.shape, generator=g, dtype=dtype)
        for prediction in ("eps", "x0", "v"):
            for variance in ("fixed_small", "fixed_large", "learned_range"):
                p = GaussianDiffusion(proc.betas.numpy(), prediction=prediction, variance=variance)
                o = torch.cat([out, out.clamp(-1, 1)], 1) if variance == "learned_range" else out
                pred = p.p_mean_variance(o, xt, t, clip_x0=True)
                for field in pred:
                    assert torch.isfinite(field).all()
                assert torch.isfinite(vlb_term(p, o, x0, xt, torch.full((3,), t))).all()
    assert torch.isfinite(prior_bpd(proc, x0)).all()
