"""The learning-rate schedules and the EMA variants: closed forms at chosen steps, and on a toy sequence."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from ddpmkit import validate
from ddpmkit.training import ema as E
from ddpmkit.training.lr import LR_SCHEDULES, lr_at


def test_validate_knows_the_training_names():
    assert validate.LR_SCHEDULES == LR_SCHEDULES
    assert validate.EMA_KINDS == E.EMA_KINDS and validate.MAX_EMA_STD == E.MAX_SIGMA_REL


def test_constant_schedule_is_the_earlier_warm_up_bit_for_bit():
    lr = 1e-3
    for warmup in (0, 1, 7, 200):
        for step in range(0, 400, 3):
            old = lr * min(1.0, (step + 1) / warmup) if warmup > 0 else lr
            assert lr_at(step, lr=lr, warmup=warmup, steps=300) == old


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_decaying_schedules_at_chosen_steps(schedule):
    lr, lr_min, warmup, steps = 2e-3, 1e-5, 100, 1101   # 1000 decay steps after warm-up: 100 .. 1100
    kw = dict(lr=lr, warmup=warmup, steps=steps, schedule=schedule, lr_min=lr_min)
    assert lr_at(0, **kw) == pytest.approx(lr / warmup, rel=1e-15)      # warm-up as before
    assert lr_at(49, **kw) == pytest.approx(lr / 2, rel=1e-15)
    assert lr_at(warmup - 1, **kw) == lr                                 # warm-up end
    assert lr_at(warmup, **kw) == lr                                     # decay starts from lr
    assert lr_at(600, **kw) == pytest.approx((lr + lr_min) / 2, rel=1e-12)   # middle: p = 1/2 for both
    assert lr_at(steps - 1, **kw) == pytest.approx(lr_min, rel=1e-12)   # last step
    assert lr_at(steps + 50, **kw) == pytest.approx(lr_min, rel=1e-12)  # clamped after the end
    p = 0.25                                                             # step 350
    expected = (lr_min + (lr - lr_min) * (1 + math.cos(math.pi * p)) / 2 if schedule == "cosine"
                else lr + (lr_min - lr) * p)
    assert lr_at(350, **kw) == pytest.approx(expected, rel=1e-12)
    values = [lr_at(s, **kw) for s in range(warmup, steps)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))  # never rises after warm-up
    # without warm-up the first step has the full rate
    assert lr_at(0, lr=lr, steps=11, schedule=schedule, lr_min=0.0) == lr
    assert lr_at(10, lr=lr, steps=11, schedule=schedule, lr_min=0.0) == pytest.approx(0.0, abs=1e-20)
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'step'"):
        lr_at(500, lr=lr, warmup=0, steps=10, schedule="step")


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_decay_start_holds_the_rate_then_decays_the_rest(schedule):
    """Warm-up, stable, decay: with decay_start the rate is lr up to that step, then the same curve as a
    decay-only run over the remaining steps (shifted); a decay_start inside the warm-up changes nothing."""
    lr, lr_min, warmup, start, steps = 4e-3, 0.0, 200, 20_000, 25_000
    kw = dict(lr=lr, warmup=warmup, steps=steps, schedule=schedule, lr_min=lr_min, decay_start=start)
    assert lr_at(99, **kw) == lr * 100 / warmup                        # warm-up untouched
    assert all(lr_at(s, **kw) == lr for s in range(warmup, start + 1, 997))
    assert lr_at(start, **kw) == lr                                    # the decay starts from lr
    shifted = dict(lr=lr, warmup=0, steps=steps - start, schedule=schedule, lr_min=lr_min)
    for s in range(start, steps + 10, 113):
        assert lr_at(s, **kw) == lr_at(s - start, **shifted)
    assert lr_at(steps - 1, **kw) == pytest.approx(lr_min, abs=1e-18)
    assert lr_at(start + (steps - 1 - start) // 2, **kw) == pytest.approx((lr + lr_min) / 2, rel=1e-3)
    early = dict(kw, decay_start=50)                                    # <= warmup: the plain schedule
    plain = dict(kw, decay_start=0)
    assert all(lr_at(s, **early) == lr_at(s, **plain) for s in range(0, steps, 251))
    assert lr_at(start, lr=lr, warmup=warmup, steps=steps, decay_start=start) == lr   # constant ignores it


class Scalar(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))


def run_ema(ema_kwargs, thetas):
    model = Scalar()
    ema = E.EMA(model, **ema_kwargs)
    for i, theta in enumerate(thetas):
        with torch.no_grad():
            model.w.copy_(theta)
            model.count.fill_(i)
        ema.update(model)
    return ema


@pytest.mark.parametrize("sigma_rel", [0.05, 0.1, 0.2, E.MAX_SIGMA_REL])
def test_power_ema_is_the_closed_form_weighted_average(sigma_rel):
    """theta_1..theta_t averaged by beta_t = (1 - 1/t)^(gamma+1) equals sum_tau w_tau theta_tau with
    w_tau = (tau^(gamma+1) - (tau-1)^(gamma+1)) / t^(gamma+1) (Karras et al. 2024)."""
    g = torch.Generator().manual_seed(0)
    t = 300
    thetas = torch.randn(t, 3, generator=g, dtype=torch.float64) + torch.arange(t, dtype=torch.float64)[:, None] / 30
    ema = run_ema({"kind": "power", "sigma_rel": sigma_rel}, thetas)
    gamma = ema.gamma
    tau = np.arange(1, t + 1, dtype=np.float64)
    w = (tau ** (gamma + 1) - (tau - 1) ** (gamma + 1)) / t ** (gamma + 1)
    assert w.sum() == pytest.approx(1.0, rel=1e-12)
    expected = (torch.from_numpy(w)[:, None] * thetas).sum(0)
    torch.testing.assert_close(ema.module.w.detach(), expected, rtol=1e-10, atol=1e-12)
    assert int(ema.module.count) == t - 1                              # integer buffers copied, not averaged
    # the weights' profile has the requested relative width (exactly so as t grows)
    x = tau / t
    mean = (w * x).sum()
    assert math.sqrt((w * (x - mean) ** 2).sum()) == pytest.approx(sigma_rel, rel=0.02)


def test_sigma_rel_to_gamma_inverts_the_profile_width():
    for gamma in (0.0, 0.5, 3.0, 6.94, 16.97, 50.0):
        sigma = math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))
        assert E.sigma_rel_to_gamma(sigma) == pytest.approx(gamma, rel=1e-9, abs=1e-9)
    assert E.sigma_rel_to_gamma(E.MAX_SIGMA_REL) == pytest.approx(0.0, abs=1e-9)  # the plain running mean
    for bad in (0.0, -0.1, 0.3):
        with pytest.raises(ValueError, match="sigma_rel must lie in"):
            E.sigma_rel_to_gamma(bad)
    assert E.power_beta(0, 5.0) == 0.0                                   # the first update copies the weights


def test_exponential_ema_default_is_the_earlier_recursion():
    g = torch.Generator().manual_seed(1)
    thetas = torch.randn(40, 3, generator=g, dtype=torch.float64)
    for warmup in (True, False):
        ema = run_ema({"decay": 0.9, "warmup": warmup}, thetas)
        avg = torch.zeros(3, dtype=torch.float64)
        for n, theta in enumerate(thetas):
            d = min(0.9, (1.0 + n) / (10.0 + n)) if warmup else 0.9
            avg = avg.lerp(theta, 1.0 - d)
        assert torch.equal(ema.module.w.detach(), avg)
    with pytest.raises(ValueError, match="unknown EMA kind 'karras'"):
        E.EMA(Scalar(), kind="karras")
