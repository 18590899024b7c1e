"""Closed-form checks of the sample-quality metrics."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from ddpmkit.evaluation import (
    class_coverage,
    feature_stats,
    frechet_distance,
    frechet_distance_of_features,
    inception_score,
    precision_recall,
)


def test_frechet_distance_diagonal_closed_form():
    """Diagonal (commuting) covariances: ||mu1 - mu2||^2 + sum (sqrt a - sqrt b)^2."""
    rng = np.random.default_rng(0)
    d = 16
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_commuting_rotated_covariances():
    """Same eigenvectors (a random rotation), different eigenvalues: the same closed form holds."""
    rng = np.random.default_rng(1)
    d = 12
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a, b = rng.uniform(0.05, 2.0, d), rng.uniform(0.05, 2.0, d)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    mu = rng.normal(size=d)
    expected = ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu, s1, mu, s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_matches_scipy_sqrtm_for_general_covariances():
    rng = np.random.default_rng(2)
    d = 20
    A, B = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = A @ A.T / d, B @ B.T / d
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    got = frechet_distance(mu1, s1, mu2, s2)
    assert got == pytest.approx(expected, rel=1e-8)
    assert got == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-9)  # symmetric


def test_frechet_distance_of_identical_and_singular():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 80))  # n < d: singular covariance, still finite and ~0 against itself
    mu, s = feature_stats(x)
    assert frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-8)
    # pure mean shift; the ~30 null eigenvalues contribute sqrt(round-off) each, hence abs=1e-5
    assert frechet_distance_of_features(x, x + 1.0) == pytest.approx(80.0, abs=1e-5)


def test_frechet_distance_of_samples_approaches_closed_form():
    """Two Gaussians sampled: plug-in estimate close to the exact distance (float32 input is fine)."""
    g = torch.Generator().manual_seed(0)
    d, n = 4, 200_000
    a, b = torch.tensor([1.0, 0.5, 2.0, 0.1]), torch.tensor([0.5, 0.5, 1.0, 0.4])
    x = torch.randn(n, d, generator=g) * a.sqrt()
    y = 0.3 + torch.randn(n, d, generator=g) * b.sqrt()
    expected = d * 0.09 + ((a.sqrt() - b.sqrt()) ** 2).sum().item()
    assert frechet_distance_of_features(x, y) == pytest.approx(expected, abs=0.01)


def test_feature_stats_and_errors():
    x = np.arange(12.0).reshape(4, 3)
    mu, s = feature_stats(torch.tensor(x, dtype=torch.float32))
    np.testing.assert_allclose(mu, x.mean(0))
    np.testing.assert_allclose(s, np.cov(x, rowvar=False))
    assert mu.dtype == np.float64
    with pytest.raises(ValueError, match="at least 2"):
        feature_stats(x[:1])
    with pytest.raises(ValueError, match="equal length"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_precision_recall_extremes_and_mode_collapse():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(400, 5))
    pr = precision_recall(real, real.copy(), k=3)
    assert pr["precision"] == 1.0 and pr["recall"] == 1.0
    far = precision_recall(real, real + 100.0, k=3)
    assert far["precision"] == 0.0 and far["recall"] == 0.0
    # mode collapse: fakes all near one real point -> high precision, low recall
    collapsed = real[0] + 0.01 * rng.normal(size=(400, 5))
    pr = precision_recall(real, collapsed, k=3)
    assert pr["precision"] > 0.9 and pr["recall"] < 0.1
    # chunking changes nothing
    fake = rng.normal(size=(300, 5)) * 1.3
    assert precision_recall(real, fake, chunk=7) == precision_recall(real, fake, chunk=1000)
    with pytest.raises(ValueError, match="more than k"):
        precision_recall(real[:3], fake, k=3)


def test_inception_score_closed_forms():
    k = 10
    assert inception_score(np.zeros((100, k)))[0] == pytest.approx(1.0)  # uniform p(y|x)
    confident = np.full((1000, k), -50.0)
    confident[np.arange(1000), np.arange(1000) % k] = 50.0
    mean, std = inception_score(confident, splits=10)
    assert mean == pytest.approx(k, rel=1e-6) and std < 1e-6
    one_class = np.full((100, k), -50.0)
    one_class[:, 3] = 50.0
    assert inception_score(one_class)[0] == pytest.approx(1.0, abs=1e-6)
    # two equally likely classes per sample, all samples alike: p(y|x) = p(y) -> IS 1
    two = np.full((100, k), -50.0)
    two[:, :2] = 0.0
    assert inception_score(two)[0] == pytest.approx(1.0, abs=1e-9)


def test_class_coverage():
    logits = np.full((30, 10), -10.0)
    logits[np.arange(30), np.arange(30) % 5] = 10.0
    c = class_coverage(logits)
    assert c["coverage"] == 0.5 and c["classes_covered"] == 5 and c["num_classes"] == 10
    assert c["counts"] == [6] * 5 + [0] * 5
    assert c["mean_max_prob"] == pytest.approx(1.0, abs=1e-6)
    assert class_coverage(np.zeros((4, 10)))["mean_max_prob"] == pytest.approx(0.1)
    assert c["confident_fraction"] == 1.0 and c["confident_classes"] == 5
    # two classes' samples made unsure (top probability 0.5 < 0.9): those classes stop counting as confident
    unsure = logits.copy()
    unsure[np.arange(30) % 5 >= 3, 9] = 10.0
    u = class_coverage(unsure)
    assert u["confident_fraction"] == pytest.approx(18 / 30) and u["confident_classes"] == 3
    assert class_coverage(unsure, confident=0.4)["confident_fraction"] == 1.0
    assert class_coverage(logits, min_count=7)["coverage"] == 0.0
    assert math.isclose(class_coverage(logits[:, :5], num_classes=5)["coverage"], 1.0)
