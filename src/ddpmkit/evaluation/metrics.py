"""Sample-quality metrics on feature vectors: Fréchet distance (FID), precision/recall
(Kynkäänniemi et al. 2019), Inception Score and class coverage.  Small pure functions on numpy /
torch arrays; everything statistical is done in float64.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def _f64(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64."""
    f = _f64(features)
    if f.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {f.shape}")
    if f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {f.shape[0]}")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2):

        ||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2)).

    The trace of the matrix square root is computed as the sum of square roots of the eigenvalues of
    the symmetric PSD matrix sigma1^(1/2) sigma2 sigma1^(1/2) (same spectrum as sigma1 sigma2), which
    needs no complex arithmetic and no epsilon fudge; float64 throughout.
    """
    mu1, mu2, s1, s2 = _f64(mu1), _f64(mu2), np.atleast_2d(_f64(sigma1)), np.atleast_2d(_f64(sigma2))
    if mu1.shape != mu2.shape or mu1.ndim != 1:
        raise ValueError(f"means must be 1-D of equal length, got {mu1.shape} and {mu2.shape}")
    d = mu1.shape[0]
    if s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"covariances must be ({d}, {d}), got {s1.shape} and {s2.shape}")
    r1 = _sqrt_psd(s1)
    m = r1 @ s2 @ r1
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean, 0.0))


def frechet_distance_of_features(real, fake) -> float:
    return frechet_distance(*feature_stats(real), *feature_stats(fake))


def _kth_neighbour_radii(x: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Distance from each row of x to its k-th nearest other row."""
    out = []
    for i in range(0, len(x), chunk):
        d = torch.cdist(x[i:i + chunk], x)
        out.append(d.topk(k + 1, dim=1, largest=False).values[:, k])  # column 0 is the point itself
    return torch.cat(out)


def _covered(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int) -> torch.Tensor:
    """For each query: does it lie within radius of some centre?"""
    out = []
    for i in range(0, len(queries), chunk):
        d = torch.cdist(queries[i:i + chunk], centres)
        out.append((d <= radii[None, :]).any(dim=1))
    return torch.cat(out)


def precision_recall(real_features, fake_features, k: int = 3, chunk: int = 1024) -> dict[str, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019).

    Each feature set defines a manifold: the union of balls around its points, with radius the distance
    to the point's k-th nearest neighbour in the same set.  Precision = fraction of fake points inside
    the real manifold; recall = fraction of real points inside the fake manifold.
    """
    real = torch.as_tensor(_f64(real_features))
    fake = torch.as_tensor(_f64(fake_features))
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be (N, D) with equal D, got {tuple(real.shape)} and {tuple(fake.shape)}")
    if k < 1 or len(real) <= k or len(fake) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than k points in each set, "
                         f"got {len(real)} real and {len(fake)} fake")
    r_real = _kth_neighbour_radii(real, k, chunk)
    r_fake = _kth_neighbour_radii(fake, k, chunk)
    precision = _covered(fake, real, r_real, chunk).double().mean().item()
    recall = _covered(real, fake, r_fake, chunk).double().mean().item()
    return {"precision": precision, "recall": recall, "k": k}


def _log_softmax64(logits) -> np.ndarray:
    z = _f64(logits)
    if z.ndim != 2:
        raise ValueError(f"logits must be (N, classes), got shape {z.shape}")
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def inception_score(logits, splits: int = 10) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))), mean and standard deviation over ``splits`` equal chunks
    (Salimans et al. 2016).  Ranges from 1 to the number of classes."""
    logp = _log_softmax64(logits)
    n = len(logp)
    splits = max(1, min(splits, n))
    scores = []
    for part in np.array_split(np.arange(n), splits):
        lp = logp[part]
        p = np.exp(lp)
        log_py = np.log(p.mean(axis=0) + 1e-300)
        scores.append(math.exp(float((p * (lp - log_py)).sum(axis=1).mean())))
    return float(np.mean(scores)), float(np.std(scores))


def class_coverage(logits, num_classes: int | None = None, min_count: int = 1, confident: float = 0.9) -> dict:
    """Which classes the classifier assigns samples to, and how confidently.

    Returns ``coverage`` (fraction of the classes that receive at least ``min_count`` samples as their
    argmax), ``mean_max_prob`` (average confidence), ``confident_fraction`` (samples whose top probability
    exceeds ``confident``), ``confident_classes`` (classes with at least ``min_count`` such samples),
    ``counts`` per class and the number of classes.
    """
    logp = _log_softmax64(logits)
    k = num_classes or logp.shape[1]
    pred = logp.argmax(axis=1)
    top = np.exp(logp.max(axis=1))
    counts = np.bincount(pred, minlength=k)
    sure = np.bincount(pred[top > confident], minlength=k)
    return {"coverage": float((counts >= min_count).sum() / k), "classes_covered": int((counts >= min_count).sum()),
            "num_classes": int(k), "mean_max_prob": float(top.mean()),
            "confident_fraction": float((top > confident).mean()), "confident_classes": int((sure >= min_count).sum()),
            "counts": counts.tolist()}


__all__ = ["feature_stats", "frechet_distance", "frechet_distance_of_features", "precision_recall",
           "inception_score", "class_coverage"]
