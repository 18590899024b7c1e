"""Evaluation: bits/dim of the variational bound, FID and friends, rate-distortion.

Small pure functions (metrics, rate-distortion from bound terms) plus the feature networks and the
cached reference statistics that ``ddpmkit eval`` uses.
"""

from .classifier import SmallClassifier, classifier_names, load_classifier
from .features import ClassifierFeatures, InceptionFeatures, get_feature_extractor
from .fid import fid_of_images, sample_count_warning, score_features
from .likelihood import NLLResult, dataset_batches, evaluate_nll
from .metrics import (
    class_coverage,
    feature_stats,
    frechet_distance,
    frechet_distance_of_features,
    inception_score,
    precision_recall,
)
from .rate_distortion import rate_distortion_from_terms, write_rate_distortion
from .reference import Reference, reference_features

__all__ = [
    "ClassifierFeatures", "InceptionFeatures", "NLLResult", "Reference", "SmallClassifier", "class_coverage",
    "classifier_names", "dataset_batches", "evaluate_nll", "feature_stats", "fid_of_images", "frechet_distance",
    "frechet_distance_of_features", "get_feature_extractor", "inception_score", "load_classifier",
    "precision_recall", "rate_distortion_from_terms", "reference_features", "sample_count_warning",
    "score_features", "write_rate_distortion",
]
