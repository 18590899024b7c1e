"""evaluate_nll and rate-distortion against closed forms: 8-bit quantised Gaussian data N(MU, SD^2)
per dimension, with the exact denoiser (posterior mean, and for learned variance the true reverse
variance) -- the same construction as tests/diffusion/test_losses.py."""

import json
import math

import numpy as np
import pytest
import torch

from ddpmkit.diffusion import GaussianDiffusion
from ddpmkit.diffusion.losses import bpd_terms
from ddpmkit.evaluation import evaluate_nll, rate_distortion_from_terms, write_rate_distortion
from ddpmkit.evaluation.rate_distortion import progressive_steps, table_rows
from ddpmkit.testing.gaussian_data import QuantisedGaussian

DATA = QuantisedGaussian(0.1, 0.3)
MU, SD = DATA.mu, DATA.sd
posterior = DATA.posterior
exact_model = DATA.model_fn
quantised_gaussian = DATA.quantised


@pytest.fixture(scope="module")
def gaussian_results():
    x0, nll = quantised_gaussian(240, 4, seed=0)
    out = {}
    for variance in ("learned_range", "fixed_large", "fixed_small"):
        proc = GaussianDiffusion.from_schedule("linear", 1000, variance=variance).double()
        out[variance] = (proc, evaluate_nll(exact_model(proc), proc, [x0], seed=3))  # T loops per batch: one batch
    return x0, nll, out


def test_nll_of_exact_model_matches_the_true_nll(gaussian_results):
    """Learned (exact) variance: bound = true NLL up to the decoder gap (~0.006 bits); fixed variances are
    looser, the small one most (Improved DDPM Sec. 3.1)."""
    x0, nll, out = gaussian_results
    res = out["learned_range"][1]
    gap = res.total - nll.numpy()
    se = gap.std(ddof=1) / math.sqrt(len(gap))
    assert -4 * se < gap.mean() < 0.03 + 4 * se
    s = res.summary()
    assert s["n"] == 240 and s["timesteps"] == 1000
    assert 0 < s["total_bpd_se"] < 0.2
    totals = {v: r.total.mean() for v, (_, r) in out.items()}
    assert totals["fixed_small"] > totals["fixed_large"] > totals["learned_range"]


def test_nll_breakdown_adds_up(gaussian_results):
    _, _, out = gaussian_results
    res = out["fixed_large"][1]
    np.testing.assert_allclose(res.total, res.prior + res.kl + res.decoder, rtol=1e-10)
    s = res.summary()
    assert s["total_bpd"] == pytest.approx(s["prior_bpd"] + s["kl_bpd"] + s["decoder_bpd"])
    assert sum(q["bpd"] for q in s["quarters"]) == pytest.approx(s["kl_bpd"])
    assert res.vb_mean[0] == pytest.approx(res.decoder.mean())
    d = res.to_dict()
    assert len(d["per_t"]["vb_bpd"]) == 1000
    json.dumps(d)  # JSON-able


def test_evaluate_nll_equals_bpd_terms_and_passes_labels():
    """One batch: identical to bpd_terms with the same generator; (x, y) pairs hand y to the model."""
    proc = GaussianDiffusion.from_schedule("cosine", 20).double()
    x0, _ = quantised_gaussian(16, 3, seed=1)
    seen = []

    def fn(xt, t, y=None):
        seen.append(y)
        return exact_model(proc)(xt, t)

    res = evaluate_nll(fn, proc, [(x0, torch.arange(16))], seed=5)
    ref = bpd_terms(proc, exact_model(proc), x0, generator=torch.Generator().manual_seed(5))
    np.testing.assert_allclose(res.total, ref["total_bpd"].numpy())
    np.testing.assert_allclose(res.vb_mean, ref["vb"].mean(0).numpy())
    assert all(y is not None and y.tolist() == list(range(16)) for y in seen)
    with pytest.raises(ValueError, match="no data"):
        evaluate_nll(fn, proc, [], seed=0)


def test_rate_distortion_from_terms_by_hand():
    vb = np.array([5.0, 1.0, 2.0, 3.0])   # vb[0] is the decoder, not part of the rate
    mse = np.array([0.0, 0.01, 0.04, 0.16])
    rd = rate_distortion_from_terms(vb, 0.5, mse)
    np.testing.assert_allclose(rd["rate"], [0.5 + 6, 0.5 + 5, 0.5 + 3, 0.5])
    np.testing.assert_allclose(rd["distortion"], 127.5 * np.sqrt(mse))
    assert rd["t"].tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        rate_distortion_from_terms(vb, 0.0, mse[:2])


def test_rate_distortion_of_exact_gaussian_model(gaussian_results, tmp_path):
    x0, _, out = gaussian_results
    proc, res = out["fixed_small"]
    rd = rate_distortion_from_terms(res.vb_mean, res.prior.mean(), res.x0_mse_mean)
    T = proc.num_timesteps
    assert np.all(np.diff(rd["rate"]) <= 1e-12)                      # non-increasing in t
    assert rd["rate"][T - 1] == pytest.approx(res.prior.mean())        # only the prior at the start
    assert rd["rate"][0] + res.decoder.mean() == pytest.approx(res.total.mean())  # lossless code length
    # at t = T-1 the best guess is the data mean: distortion = data std on [0, 255] (SD of the quantised data)
    assert rd["distortion"][T - 1] == pytest.approx(127.5 * x0.std().item(), rel=0.03)
    # at every t, the mean squared error of E[x0 | x_t] is Var[x0 | x_t] in expectation
    t = torch.arange(T)
    var0 = posterior(proc, torch.zeros(T, 1, dtype=torch.float64), t)[1].squeeze(1).numpy()
    for i in (0, 10, 100, 300, 600, 999):
        assert res.x0_mse_mean[i] == pytest.approx(var0[i], rel=0.15)
    assert rd["distortion"][0] < 2.0                                     # nearly lossless at t = 0
    paths = write_rate_distortion(rd, tmp_path, meta={"note": "test"})
    assert all(p.is_file() for p in paths.values())
    lines = paths["csv"].read_text().splitlines()
    assert lines[0] == "t,rate_bpd,distortion_rmse" and len(lines) == T + 1
    payload = json.loads(paths["json"].read_text())
    assert payload["note"] == "test" and len(payload["rate_bpd"]) == T
    rows = table_rows(rd, 5)
    assert [r[0] for r in rows] == [999, 749, 500, 250, 0]
    assert progressive_steps(1000, 6) == [999, 799, 599, 400, 200, 0]
