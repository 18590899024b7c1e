"""FID and friends for a set of generated images against cached real reference features."""

from __future__ import annotations

import time

import torch

from .metrics import class_coverage, feature_stats, frechet_distance, inception_score, precision_recall

MIN_STABLE_N = 2000


def sample_count_warning(n: int, feature_dim: int, what: str = "generated") -> str | None:
    """A warning when ``n`` samples are too few for a stable FID (biased upward, noisy), else None."""
    if n < max(MIN_STABLE_N, feature_dim):
        why = (f"fewer than the feature dimension {feature_dim}, so the covariance is singular"
               if n < feature_dim else f"fewer than {MIN_STABLE_N}")
        return (f"FID from n = {n} {what} images ({why}) is biased upward and noisy; use n >= "
                f"{max(MIN_STABLE_N, feature_dim)} (10,000 is standard) and compare only FIDs with equal n")
    return None


def score_features(real_features, fake_features, fake_logits=None, *, real_stats=None, k: int = 3,
                   num_classes: int | None = None) -> dict:
    """FID, precision/recall (k-NN manifolds) and, with logits, Inception Score and class coverage."""
    mu_r, s_r = real_stats if real_stats is not None else feature_stats(real_features)
    mu_f, s_f = feature_stats(fake_features)
    out = {"fid": frechet_distance(mu_r, s_r, mu_f, s_f), "n_fake": int(len(fake_features)),
           "n_real": int(len(real_features))}
    out.update(precision_recall(real_features, fake_features, k=k))
    if fake_logits is not None:
        is_mean, is_std = inception_score(fake_logits)
        out["inception_score"], out["inception_score_std"] = is_mean, is_std
        out.update(class_coverage(fake_logits, num_classes))
    return out


def fid_of_images(extractor, real_images: torch.Tensor, fake_images: torch.Tensor, k: int = 3) -> dict:
    """All metrics for two image sets in model range (no caching): used by the floor benchmark."""
    rf, _ = extractor(real_images)
    ff, fl = extractor(fake_images)
    return score_features(rf, ff, fl, k=k, num_classes=getattr(extractor, "num_classes", None))


def generate_for_fid(run, n: int, *, sampler: str, steps: int | None = None, seed: int = 0,
                     **generate_kwargs) -> tuple[torch.Tensor, float]:
    """``n`` samples of a loaded run (class-balanced labels for conditional models) and the seconds
    taken; ``generate_kwargs`` go to ``runs.generate`` (guidance, clipping, spacing, eta, ...)."""
    from ..runs import generate

    t0 = time.perf_counter()
    x = generate(run.model, run.process, n, run.item_shape, sampler=sampler, steps=steps, seed=seed,
                 y=run.balanced_labels(n), **generate_kwargs)
    return x, time.perf_counter() - t0


def real_scores(ref, num_classes: int | None) -> dict:
    """Inception Score and coverage of the real reference images themselves (the best achievable)."""
    if ref.logits is None:
        return {}
    is_mean, _ = inception_score(ref.logits)
    cov = class_coverage(ref.logits, num_classes)
    return {"real_inception_score": is_mean, "real_mean_max_prob": cov["mean_max_prob"],
            "real_confident_fraction": cov["confident_fraction"]}


__all__ = ["score_features", "fid_of_images", "generate_for_fid", "sample_count_warning", "real_scores",
           "MIN_STABLE_N"]
