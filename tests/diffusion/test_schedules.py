import math

import numpy as np
import pytest

from ddpmkit import schedules


def test_linear_matches_ddpm_endpoints_at_T1000():
    b = schedules.linear(1000)
    assert b.dtype == np.float64 and b.shape == (1000,)
    assert b[0] == pytest.approx(1e-4, abs=0) and b[-1] == pytest.approx(0.02, abs=0)
    assert np.all(np.diff(b) > 0)


def test_linear_scales_endpoints_by_1000_over_T():
    b = schedules.linear(4000)
    assert b[0] == pytest.approx(2.5e-5, rel=1e-12)
    assert b[-1] == pytest.approx(0.005, rel=1e-12)


def test_linear_is_clipped_when_scaling_would_reach_one():
    b = schedules.linear(10)  # endpoints would be 0.01 -> 2.0
    assert b.max() == schedules.MAX_BETA and b.min() == pytest.approx(0.01)


@pytest.mark.parametrize("T", [1, 50, 1000, 4000])
def test_cosine_alpha_bar_matches_cos_squared_formula(T):
    s = 0.008
    b = schedules.cosine(T)
    abar = np.cumprod(1 - b)
    f = [math.cos((i / T + s) / (1 + s) * math.pi / 2) ** 2 for i in range(T + 1)]
    expected = np.array([f[i] / f[0] for i in range(1, T + 1)])
    unclipped = np.cumprod(b < schedules.MAX_BETA).astype(bool)  # before the first clipped step
    assert unclipped.sum() >= T - 1
    np.testing.assert_allclose(abar[unclipped], expected[unclipped], rtol=1e-10, atol=1e-15)
    assert b.max() <= 0.999


def test_quadratic_and_sigmoid_are_valid_monotone_schedules():
    for fn in (schedules.quadratic, schedules.sigmoid):
        b = fn(1000)
        assert np.all((b > 0) & (b < 1))
        abar = np.cumprod(1 - b)
        assert np.all(np.diff(abar) < 0)
    q = schedules.quadratic(1000)
    np.testing.assert_allclose(np.sqrt(q[[0, -1]]), np.sqrt([1e-4, 0.02]), rtol=1e-12)


def test_lookup_by_name_and_unknown_name_lists_valid_choices():
    np.testing.assert_array_equal(schedules.get_betas("cosine", 100), schedules.cosine(100))
    with pytest.raises(ValueError, match="valid schedules: cosine, linear, quadratic, sigmoid"):
        schedules.get_betas("cosin", 100)
    with pytest.raises(ValueError, match="needs the number of steps"):
        schedules.get_betas("linear")


def test_user_array_is_validated():
    np.testing.assert_array_equal(schedules.get_betas([0.1, 0.2]), [0.1, 0.2])
    for bad in ([], [[0.1]], [0.0, 0.1], [0.5, 1.0], [float("nan")]):
        with pytest.raises(ValueError):
            schedules.get_betas(bad)
    with pytest.raises(ValueError, match="T = 3"):
        schedules.get_betas([0.1, 0.2], 3)


@pytest.mark.parametrize("T", [0, -1, 2.5, True])
def test_bad_T(T):
    with pytest.raises(ValueError, match="T must be an integer >= 1"):
        schedules.linear(T)
