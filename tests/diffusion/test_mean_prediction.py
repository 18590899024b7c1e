"""mu~ prediction (Ho et al.'s first parameterisation) and the learned diagonal variance, checked
against closed forms and against the equivalent eps model on exact Gaussian data."""

import math

import numpy as np
import pytest
import torch

from ddpmkit import GaussianDiffusion
from ddpmkit.diffusion import losses
from ddpmkit.diffusion import parameterization as P
from ddpmkit.diffusion.timesteps import respaced
from ddpmkit.samplers import ddim_sample, ddpm_sample
from ddpmkit.testing.gaussian_data import QuantisedGaussian

DATA = QuantisedGaussian(0.1, 0.3)
ALL_T = torch.arange(1000)


def closed_form_coefs(schedule: str, t: torch.Tensor):
    """c1, c2 of mu~ = c1 x0 + c2 x_t from the betas alone (Ho et al., eq. 7), shaped (B, 1)."""
    betas = GaussianDiffusion.from_schedule(schedule, 1000).betas.numpy()
    abar = np.cumprod(1 - betas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    c1 = betas * np.sqrt(abar_prev) / (1 - abar)
    c2 = (1 - abar_prev) * np.sqrt(1 - betas) / (1 - abar)
    return torch.from_numpy(c1)[t].view(-1, 1), torch.from_numpy(c2)[t].view(-1, 1)


def draw(proc, n=1000, d=3, seed=0, t=ALL_T):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(n, d, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(n, d, generator=g, dtype=torch.float64)
    return x0, eps, proc.q_sample(x0, t, eps)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_mean_x0_eps_round_trips_at_every_step(schedule):
    proc = GaussianDiffusion.from_schedule(schedule, 1000, prediction="mean").double()
    x0, eps, xt = draw(proc)
    c1, c2 = closed_form_coefs(schedule, ALL_T)
    mu = P.mean_from_x0(xt, x0, c1, c2)
    torch.testing.assert_close(P.x0_from_mean(xt, mu, c1, c2), x0, rtol=0, atol=1e-9)
    # t = 0 (papers' t = 1): c1 = 1 and c2 = 0, the mean *is* x0
    assert c1[0].item() == pytest.approx(1.0, abs=1e-12) and c2[0].item() == 0.0
    # through the adapter: a network that outputs mu~ gives back x0, eps and the mean itself
    pred = proc.p_mean_variance(mu, xt, ALL_T)
    torch.testing.assert_close(pred.x0, x0, rtol=0, atol=1e-9)
    torch.testing.assert_close(pred.eps, eps, rtol=0, atol=1e-9)
    torch.testing.assert_close(pred.mean, mu, rtol=0, atol=1e-12)
    # and the other way: eps -> x0 -> mu -> x0 -> eps
    alpha = proc.extract(proc.sqrt_alphas_cumprod, ALL_T, xt)
    sigma = proc.extract(proc.sqrt_one_minus_alphas_cumprod, ALL_T, xt)
    back = P.x0_from_mean(xt, P.mean_from_x0(xt, P.x0_from_eps(xt, eps, alpha, sigma), c1, c2), c1, c2)
    torch.testing.assert_close(P.eps_from_x0(xt, back, alpha, sigma), eps, rtol=0, atol=1e-8)


@pytest.mark.parametrize("variance", ["fixed_small", "learned"])
def test_exact_mean_model_equals_the_exact_eps_model(variance):
    """On quantised Gaussian data the optimal mu~ network and the optimal eps network are one model:
    same x0, eps, mean, log-variance at every t, same samples (DDPM over all steps, DDIM over 20,
    i.e. respaced), same terms of the bound — float64, equal up to rounding."""
    p_eps = GaussianDiffusion.from_schedule("cosine", 1000, variance=variance).double()
    p_mu = GaussianDiffusion.from_schedule("cosine", 1000, prediction="mean", variance=variance).double()
    f_eps, f_mu = DATA.model_fn(p_eps), DATA.model_fn(p_mu)
    x0, _, xt = draw(p_eps, d=4, seed=1)
    a = p_eps.p_mean_variance(f_eps(xt, ALL_T), xt, ALL_T)
    b = p_mu.p_mean_variance(f_mu(xt, ALL_T), xt, ALL_T)
    for name in ("x0", "eps", "mean", "log_var"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name), rtol=1e-9, atol=1e-9, msg=name)

    for sample, steps in ((ddpm_sample, None), (ddim_sample, 20)):
        s_eps = sample(f_eps, p_eps, (200, 4), steps=steps, generator=torch.Generator().manual_seed(2),
                       dtype=torch.float64)
        s_mu = sample(f_mu, p_mu, (200, 4), steps=steps, generator=torch.Generator().manual_seed(2),
                      dtype=torch.float64)
        torch.testing.assert_close(s_mu, s_eps, rtol=1e-9, atol=1e-9)

    data, _ = DATA.quantised(64, 4, seed=3)
    t_eps = losses.bpd_terms(p_eps, f_eps, data, generator=torch.Generator().manual_seed(4))
    t_mu = losses.bpd_terms(p_mu, f_mu, data, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(t_mu["vb"], t_eps["vb"], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(t_mu["total_bpd"], t_eps["total_bpd"], rtol=1e-10, atol=1e-10)


def test_unweighted_mse_is_the_closed_form_and_the_bound_is_its_weighted_version():
    """loss 'simple' with prediction 'mean' is mean_d (mu~ - mu_theta)^2 with no 1/(2 sigma^2); for a
    fixed variance the bound's KL at t > 0 is that squared error times 1/(2 sigma_t^2), in bits."""
    proc = GaussianDiffusion.from_schedule("linear", 1000, prediction="mean").double()
    g = torch.Generator().manual_seed(5)
    t = torch.tensor([0, 1, 2, 10, 300, 700, 999])
    x0 = torch.rand(7, 6, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(7, 6, generator=g, dtype=torch.float64)
    out = torch.randn(7, 6, generator=g, dtype=torch.float64)
    c1, c2 = closed_form_coefs("linear", t)
    abar = torch.from_numpy(np.cumprod(1 - proc.betas.numpy()))[t].view(-1, 1)
    xt = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    mu_tilde = c1 * x0 + c2 * xt
    mse = ((mu_tilde - out) ** 2).mean(1)
    torch.testing.assert_close(losses.simple_loss(proc, out, x0, t, noise), mse, rtol=1e-12, atol=0)
    got = losses.training_losses(proc, lambda x, tt: out, x0, t, loss_type="simple", noise=noise)
    torch.testing.assert_close(got["loss"], mse, rtol=1e-12, atol=0)
    sigma2 = proc.posterior_variance[t]
    kl = losses.vlb_term(proc, out, x0, xt, t)
    torch.testing.assert_close(kl[1:], mse[1:] / (2 * sigma2[1:]) / math.log(2), rtol=1e-9, atol=0)


def test_learned_diagonal_variance_is_the_output_channels_with_a_gradient():
    proc = GaussianDiffusion.from_schedule("cosine", 1000, variance="learned").double()
    g = torch.Generator().manual_seed(6)
    t = torch.tensor([0, 5, 500, 999])
    x0 = torch.rand(4, 2, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(4, 2, generator=g, dtype=torch.float64)
    w = torch.randn(4, 4, generator=g, dtype=torch.float64, requires_grad=True)

    def model(x, tt):
        return w * torch.cat([x, x], 1)

    xt = proc.q_sample(x0, t, noise)
    out = model(xt, t)
    assert torch.equal(proc.p_mean_variance(out, xt, t).log_var, out[:, 2:])
    vlb = losses.training_losses(proc, model, x0, t, loss_type="vlb", noise=noise)
    (grad,) = torch.autograd.grad(vlb["loss"].sum(), w)
    assert torch.all(grad != 0)  # the bound trains mean and log-variance channels
    simple = losses.training_losses(proc, model, x0, t, loss_type="simple", noise=noise)
    (grad,) = torch.autograd.grad(simple["loss"].sum(), w)
    assert torch.all(grad[:, 2:] == 0) and torch.all(grad[:, :2] != 0)  # L_simple: the mean part only
    hybrid = losses.training_losses(proc, model, x0, t, loss_type="hybrid", noise=noise)
    (grad,) = torch.autograd.grad(hybrid["vb"].sum(), w)
    assert torch.all(grad[:, :2] == 0) and torch.all(grad[:, 2:] != 0)
    with pytest.raises(ValueError, match=r"variance 'learned' needs a model output with 2\*2 = 4 channels"):
        proc.p_mean_variance(out[:, :3], xt, t)


def test_respaced_process_reads_mean_and_learned_variance_on_the_networks_step():
    """After respacing, a mu~ output is the mean of the *original* step network_t(t): x0 comes from
    that step's coefficients; a learned log-variance keeps its position between log beta~ and log beta."""
    base = GaussianDiffusion.from_schedule("linear", 1000, prediction="mean", variance="learned").double()
    proc = respaced(base, 10)
    assert proc.is_respaced and not base.is_respaced
    i = torch.arange(10)
    orig = proc.network_t(i)
    x0, _, xt = draw(proc, n=10, d=3, seed=7, t=i)
    c1, c2 = closed_form_coefs("linear", orig)
    frac = torch.linspace(0, 1, 10, dtype=torch.float64).view(-1, 1)
    lo, hi = base.posterior_log_variance_clipped[orig].view(-1, 1), base.log_betas[orig].view(-1, 1)
    out = torch.cat([c1 * x0 + c2 * xt, (lo + frac * (hi - lo)).expand(-1, 3)], 1)
    pred = proc.p_mean_variance(out, xt, i)
    torch.testing.assert_close(pred.x0, x0, rtol=0, atol=1e-9)
    lo_new, hi_new = proc.posterior_log_variance_clipped.view(-1, 1), proc.log_betas.view(-1, 1)
    want = lo_new + frac * (hi_new - lo_new)
    torch.testing.assert_close(pred.log_var, want.expand(-1, 3), rtol=1e-12, atol=1e-12)
