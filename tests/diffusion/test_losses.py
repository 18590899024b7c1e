import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from ddpmkit import GaussianDiffusion
from ddpmkit.diffusion import losses
from ddpmkit.diffusion import parameterization as P
from ddpmkit.testing.gaussian_data import LEVELS, QuantisedGaussian


def test_normal_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(50, generator=g, dtype=torch.float64), torch.randn(50, generator=g, dtype=torch.float64)
    lv1, lv2 = torch.randn(50, generator=g, dtype=torch.float64), torch.randn(50, generator=g, dtype=torch.float64)
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(m1, (0.5 * lv1).exp()),
                                            torch.distributions.Normal(m2, (0.5 * lv2).exp()))
    torch.testing.assert_close(losses.normal_kl(m1, lv1, m2, lv2), ref)


@pytest.mark.parametrize("mean,scale", [(0.0, 0.01), (0.3, 0.2), (-0.99, 0.003), (1.0, 2.0), (0.5, 1e-4)])
def test_discretized_likelihood_is_a_distribution_over_256_levels(mean, scale):
    m = torch.full_like(LEVELS, mean)
    ls = torch.full_like(LEVELS, math.log(scale))
    logp = losses.discretized_gaussian_log_likelihood(LEVELS, m, ls)
    assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-9)
    # independent reference: normal CDF differences with edge bins open to +-inf
    edges = np.concatenate([[-np.inf], (LEVELS[:-1] + LEVELS[1:]).numpy() / 2, [np.inf]])
    ref = np.diff(norm.cdf(edges, mean, scale))
    big = ref > 1e-10
    np.testing.assert_allclose(logp.exp().numpy()[big], ref[big], rtol=1e-6)


def test_discretized_likelihood_shape_mismatch():
    with pytest.raises(ValueError, match="x shape"):
        losses.discretized_gaussian_log_likelihood(torch.zeros(2, 3), torch.zeros(3, 2), torch.zeros(3, 2))


# --- an exact model: data N(mu, sd^2) per dimension, optimal predictors in closed form ---------

DATA = QuantisedGaussian(0.1, 0.3)
MU, SD = DATA.mu, DATA.sd
gaussian_posterior = DATA.posterior
exact_model = DATA.model_fn


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_each_vlb_term_equals_the_analytic_kl(variance):
    proc = GaussianDiffusion.from_schedule("linear", 1000, variance=variance).double()
    g = torch.Generator().manual_seed(0)
    n, d = 4000, 4
    t = torch.randint(1, 1000, (n,), generator=g)
    x0 = MU + SD * torch.randn(n, d, generator=g, dtype=torch.float64)
    xt = proc.q_sample(x0, t, generator=g)
    got = losses.vlb_term(proc, exact_model(proc)(xt, t), x0, xt, t)
    # independent: KL(N(mu_q, bt) || N(mu_p, sp2)) with mu_q - mu_p = c1 (x0 - E[x0|x_t])
    ex0, var0 = gaussian_posterior(proc, xt, t)
    bt = proc.posterior_variance[t].view(-1, 1)
    sp2 = bt if variance == "fixed_small" else proc.betas[t].view(-1, 1)
    c1 = proc.posterior_mean_coef1[t].view(-1, 1)
    kl = 0.5 * (torch.log(sp2 / bt) + bt / sp2 - 1 + c1**2 * (x0 - ex0) ** 2 / sp2)
    torch.testing.assert_close(got, kl.mean(1) / math.log(2), rtol=1e-7, atol=1e-12)
    # and its expectation over q: (x0 - E[x0|x_t])^2 -> Var[x0|x_t]
    expected = (0.5 * (torch.log(sp2 / bt) + bt / sp2 - 1 + c1**2 * var0 / sp2)).mean(1) / math.log(2)
    diff = got - expected
    assert abs(diff.mean().item()) < 5 * diff.std().item() / math.sqrt(n)


def test_full_bound_is_close_to_true_nll_with_exact_mean_and_variance():
    """With the exact reverse mean and variance the bound is tight up to the decoder at t = 0.

    Data: 8-bit quantised N(0.1, 0.3^2), whose exact NLL is the entropy over the 256 bins.  The
    remaining gap comes from the Gaussian decoder (sd ~ 0.01 vs bin width 2/255), the model being
    optimal for the continuous Gaussian (quantisation adds variance 1/(3 * 255^2) ~ 5e-6 << 0.09)
    and the prior KL (~3e-6 bits).  We measured a gap of 0.006 bits/dim; the test allows 0.03 plus
    4 standard errors of the Monte Carlo mean of (bound - exact NLL) per example.  Fixed variances
    must give a larger bound, with the small one worst (Improved DDPM, Sec. 3.1).
    """
    n = 500
    x0, nll = DATA.quantised(n, 8, seed=0)
    gaps = {}
    for variance in ("learned_range", "fixed_large", "fixed_small"):
        proc = GaussianDiffusion.from_schedule("linear", 1000, variance=variance).double()
        out = losses.bpd_terms(proc, exact_model(proc), x0, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(out["total_bpd"], out["prior_bpd"] + out["vb"].sum(1))
        gap = out["total_bpd"] - nll
        gaps[variance] = (gap.mean().item(), gap.std().item() / math.sqrt(n))
    gap, se = gaps["learned_range"]
    assert -4 * se < gap < 0.03 + 4 * se
    assert gaps["fixed_small"][0] > gaps["fixed_large"][0] > gap


def test_prior_bpd_matches_closed_form():
    proc = GaussianDiffusion.from_schedule("linear", 1000).double()
    x0 = torch.linspace(-1, 1, 11, dtype=torch.float64).view(11, 1)
    ab = proc.alphas_cumprod[-1].item()
    ref = 0.5 * (-math.log(1 - ab) + (1 - ab) + ab * x0.squeeze(1) ** 2 - 1) / math.log(2)
    torch.testing.assert_close(losses.prior_bpd(proc, x0), ref)


def test_simple_loss_targets_for_each_prediction():
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(5, 2, generator=g, dtype=torch.float64)
    noise = torch.randn(5, 2, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 3, 50, 500, 999])
    for prediction in ("eps", "x0", "v"):
        proc = GaussianDiffusion.from_schedule("cosine", 1000, prediction=prediction).double()
        a, s = proc.extract(proc.sqrt_alphas_cumprod, t, x0), proc.extract(proc.sqrt_one_minus_alphas_cumprod, t, x0)
        target = {"eps": noise, "x0": x0, "v": P.v_from_x0_eps(x0, noise, a, s)}[prediction]
        assert torch.all(losses.simple_loss(proc, target, x0, t, noise) == 0)
        torch.testing.assert_close(losses.simple_loss(proc, target + 0.5, x0, t, noise), torch.full((5,), 0.25,
                                   dtype=torch.float64))


def test_training_losses_simple_vlb_hybrid():
    proc = GaussianDiffusion.from_schedule("linear", 100, variance="learned_range").double()
    g = torch.Generator().manual_seed(4)
    x0 = torch.rand(6, 2, generator=g, dtype=torch.float64) * 2 - 1
    t = torch.randint(0, 100, (6,), generator=g)
    noise = torch.randn(6, 2, generator=g, dtype=torch.float64)
    w = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)

    def model(x, tt):
        return w * torch.cat([x, x], 1)

    hybrid = losses.training_losses(proc, model, x0, t, loss_type="hybrid", noise=noise)
    vlb = losses.training_losses(proc, model, x0, t, loss_type="vlb", noise=noise)
    simple = losses.training_losses(proc, model, x0, t, loss_type="simple", noise=noise)
    torch.testing.assert_close(hybrid["mse"], simple["loss"])
    torch.testing.assert_close(hybrid["vb"], vlb["vb"] * 1e-3)
    torch.testing.assert_close(hybrid["loss"], simple["loss"] + 1e-3 * vlb["loss"])
    # stop-gradient: the bound term of the hybrid loss does not move the mean channels
    (grad,) = torch.autograd.grad(hybrid["vb"].sum(), w)
    assert torch.all(grad[:, :2] == 0) and torch.any(grad[:, 2:] != 0)
    (grad_vlb,) = torch.autograd.grad(vlb["loss"].sum(), w)
    assert torch.any(grad_vlb[:, :2] != 0)


def test_training_losses_errors():
    proc = GaussianDiffusion.from_schedule("linear", 10)
    x0, t = torch.zeros(2, 3), torch.tensor([1, 2])
    with pytest.raises(ValueError, match="valid choices: simple, vlb, hybrid"):
        losses.training_losses(proc, lambda x, t: x, x0, t, loss_type="l2")
    with pytest.raises(ValueError, match="needs variance 'learned_range'"):
        losses.training_losses(proc, lambda x, t: x, x0, t, loss_type="hybrid")


# --- SNR weighting (Min-SNR-gamma, P2) --------------------------------------------------------

def _snr_at(schedule: str, t: int) -> float:
    """SNR at index t from the betas alone (float64): prod(1 - beta) / (1 - prod(1 - beta))."""
    from ddpmkit.diffusion.schedules import get_betas

    abar = float(np.prod(1.0 - get_betas(schedule, 1000)[: t + 1]))
    return abar / (1.0 - abar)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("t", [0, 99, 400, 700, 999])
def test_min_snr_and_p2_weights_match_their_closed_forms(schedule, t):
    s = _snr_at(schedule, t)
    snr = torch.tensor([s], dtype=torch.float64)
    g = 5.0
    expected_min_snr = {"eps": min(s, g) / s, "x0": min(s, g), "v": min(s, g) / (s + 1.0)}
    k, pg = 1.0, 0.5
    expected_p2 = {"eps": (k + s) ** -pg, "x0": s * (k + s) ** -pg, "v": s / (s + 1.0) * (k + s) ** -pg}
    for pred in ("eps", "x0", "v"):
        w = losses.loss_weight(snr, pred, losses.LossWeighting("min_snr", min_snr_gamma=g))
        assert w.dtype == torch.float64 and w.item() == pytest.approx(expected_min_snr[pred], rel=1e-13)
        w = losses.loss_weight(snr, pred, losses.LossWeighting("p2", p2_gamma=pg, p2_k=k))
        assert w.item() == pytest.approx(expected_p2[pred], rel=1e-13)
    # the process's own SNR is the same number
    process = GaussianDiffusion.from_schedule(schedule, 1000)
    assert losses.signal_to_noise(process.alphas_cumprod[t]).item() == pytest.approx(s, rel=1e-12)
    # gamma = 0 of P2 is L_simple; 'none' is 1 everywhere
    assert losses.loss_weight(snr, "eps", losses.LossWeighting("p2", p2_gamma=0.0)).item() == 1.0
    assert losses.loss_weight(snr, "v", losses.LossWeighting()).item() == 1.0


@pytest.mark.parametrize("kind", ["min_snr", "p2"])
def test_weighted_losses_are_one_objective_whatever_the_target(kind):
    """The same x0 estimate, predicted as eps, x0 or v: weight * MSE of that target is the same number
    (w_x0 * ||x0 - x0_hat||^2), because the weights convert between the targets' error scales."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    x0_hat = x0 + 0.3 * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 5, 150, 500, 800, 999])
    weighting = losses.LossWeighting(kind, min_snr_gamma=5.0, p2_gamma=1.0, p2_k=1.0)
    got = {}
    for pred in ("eps", "x0", "v"):
        process = GaussianDiffusion.from_schedule("cosine", 1000, prediction=pred)
        a = process.extract(process.sqrt_alphas_cumprod, t, x0)
        s = process.extract(process.sqrt_one_minus_alphas_cumprod, t, x0)

        def net(x_t, _t, a=a, s=s, pred=pred):
            eps_hat = (x_t - a * x0_hat) / s
            return {"eps": eps_hat, "x0": x0_hat, "v": a * eps_hat - s * x0_hat}[pred]

        terms = losses.training_losses(process, net, x0, t, noise=noise, weighting=weighting)
        unweighted = losses.training_losses(process, net, x0, t, noise=noise)
        assert torch.equal(terms["mse"], unweighted["mse"])
        got[pred] = terms["loss"]
    snr = losses.signal_to_noise(process.alphas_cumprod[t])
    w_x0 = snr.clamp(max=5.0) if kind == "min_snr" else snr / (1.0 + snr)
    expected = w_x0 * losses.mean_flat((x0 - x0_hat) ** 2)
    for pred in got:
        torch.testing.assert_close(got[pred], expected, rtol=1e-9, atol=0)


def test_weighting_none_is_the_unweighted_loss_bit_for_bit_and_misfits_are_refused():
    process = GaussianDiffusion.from_schedule("linear", 50, variance="learned_range")
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(4, 1, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    out = torch.randn(4, 2, 4, 4, generator=g)
    t = torch.tensor([0, 10, 30, 49])
    for loss_type in ("simple", "hybrid"):
        a = losses.training_losses(process, lambda *_: out, x0, t, loss_type=loss_type, noise=noise)
        b = losses.training_losses(process, lambda *_: out, x0, t, loss_type=loss_type, noise=noise,
                                   weighting=losses.LossWeighting("none"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # hybrid: the weight multiplies the MSE part only
    w = losses.training_losses(process, lambda *_: out, x0, t, loss_type="hybrid", noise=noise,
                               weighting=losses.LossWeighting("min_snr"))
    weight = losses.loss_weight(losses.signal_to_noise(process.alphas_cumprod[t]), "eps",
                                losses.LossWeighting("min_snr"))
    torch.testing.assert_close(w["loss"], w["mse"] * weight.float() + w["vb"])
    with pytest.raises(ValueError, match="loss 'vlb' has none"):
        losses.training_losses(process, lambda *_: out, x0, t, loss_type="vlb", noise=noise,
                               weighting=losses.LossWeighting("p2"))
    mean = GaussianDiffusion.from_schedule("linear", 50, prediction="mean")
    with pytest.raises(ValueError, match="needs prediction 'eps' / 'x0' / 'v', got 'mean'"):
        losses.training_losses(mean, lambda *_: out[:, :1], x0, t, noise=noise,
                               weighting=losses.LossWeighting("min_snr"))
    with pytest.raises(ValueError, match="unknown loss weighting 'snr'"):
        losses.check_loss_weighting(losses.LossWeighting("snr"), "simple", "eps")
