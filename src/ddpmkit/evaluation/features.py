"""Feature networks for FID-style metrics, behind one small interface.

``extractor(images)`` takes images in model range [-1, 1], (N, C, H, W), and returns
``(features (N, D) float64 numpy, logits (N, K) or None)``.  Each extractor has ``name``,
``feature_dim``, ``weights_sha256`` (part of the reference-statistics cache key) and
``check(item_shape)`` which raises a UserError naming the mismatch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.pixels import to_model_range, to_uint8
from ..errors import UserError
from .classifier import file_sha256, load_classifier

FEATURE_KINDS = ("classifier", "inception")

INCEPTION_WEIGHTS_HELP = (
    "Inception-v3 FID weights are not downloaded at run time. Get the file "
    "'weights-inception-2015-12-05-6726825d.pth' (the TF-ported FID Inception used by torch-fidelity) from "
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth "
    "on a machine with internet access, copy it here, and pass --inception-weights PATH")


class ClassifierFeatures:
    """Penultimate-layer features and logits of a shipped :class:`SmallClassifier`, on 8-bit pixels."""

    kind = "classifier"

    def __init__(self, dataset: str, weights: str | Path | None = None, resize: bool = False):
        self.net = load_classifier(dataset, weights)
        self.name = f"classifier:{dataset}"
        self.dataset = dataset
        self.feature_dim = self.net.feature_dim
        self.num_classes = self.net.config.num_classes
        self.weights_sha256 = self.net.weights_sha256
        self.resize = resize
        c = self.net.config
        self.input_shape = (c.in_channels, c.image_size, c.image_size)

    def check(self, item_shape: tuple[int, ...]) -> None:
        if len(item_shape) != 3:
            raise UserError(f"FID needs images; this model makes items of shape {tuple(item_shape)}")
        c, h, w = item_shape
        want_c, want_s, _ = self.input_shape
        if c != want_c:
            raise UserError(f"the {self.name} feature network takes {want_c}-channel images but the samples have "
                            f"{c} channels ({'RGB' if c == 3 else 'grayscale'}); use the feature network of the "
                            "model's dataset (--features inception for RGB data)")
        if (h, w) != (want_s, want_s) and not self.resize:
            raise UserError(f"the {self.name} feature network takes {want_s}x{want_s} images but the samples are "
                            f"{h}x{w}; use the classifier of the model's dataset, or pass --resize to resize real "
                            f"and generated images alike to {want_s}x{want_s}")

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
        self.check(tuple(images.shape[1:]))
        feats, logits = [], []
        s = self.input_shape[1]
        for i in range(0, len(images), batch_size):
            x = to_model_range(to_uint8(images[i:i + batch_size]))  # scored as saved 8-bit images
            if tuple(x.shape[-2:]) != (s, s):
                x = F.interpolate(x, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
            f, z = self.net.features_and_logits(x)
            feats.append(f.double().numpy())
            logits.append(z.double().numpy())
        return np.concatenate(feats), np.concatenate(logits)


class InceptionFeatures:
    """Inception-v3 pool3 (2048-d) features and logits via torch-fidelity, from a local weights file."""

    kind = "inception"
    feature_dim = 2048
    num_classes = 1008

    def __init__(self, weights: str | Path | None):
        if not weights:
            raise UserError("--features inception needs --inception-weights PATH. " + INCEPTION_WEIGHTS_HELP)
        path = Path(weights)
        if not path.is_file():
            raise UserError(f"Inception weights file {path} does not exist. " + INCEPTION_WEIGHTS_HELP)
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError as e:
            raise UserError(
                "Inception features use torch-fidelity (`pip install torch-fidelity`), which needs torchvision built "
                f"for your torch {torch.__version__}; importing it failed ({e}). Install a matching torchvision and "
                "torch-fidelity, or use --features classifier for the built-in grayscale datasets") from None
        # torch-fidelity unpickles the file with weights_only=False; refuse anything a restricted
        # (tensors-only) load would not accept, so no arbitrary pickle ever runs.
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any failure means: not a plain tensor state dict
            raise UserError(f"{path} is not a plain PyTorch state dict of tensors ({e}). "
                            + INCEPTION_WEIGHTS_HELP) from None
        self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                               feature_extractor_weights_path=str(path))
        self.net.eval()
        self.name = "inception-v3"
        self.weights_sha256 = file_sha256(path)
        self.resize = True

    def check(self, item_shape: tuple[int, ...]) -> None:
        if len(item_shape) != 3 or item_shape[0] not in (1, 3):
            raise UserError(f"Inception features need 1- or 3-channel images, got items of shape {tuple(item_shape)}")

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 100) -> tuple[np.ndarray, np.ndarray]:
        self.check(tuple(images.shape[1:]))
        feats, logits = [], []
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size].float()
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            u8 = to_uint8(x)  # torch-fidelity takes uint8 0..255
            f, z = self.net(u8)
            feats.append(f.double().numpy())
            logits.append(z.double().numpy())
        return np.concatenate(feats), np.concatenate(logits)


def get_feature_extractor(kind: str, dataset: str, *, classifier: str | None = None,
                          classifier_weights: str | Path | None = None, inception_weights: str | Path | None = None,
                          resize: bool = False):
    """The feature network for ``kind`` ('classifier' or 'inception'); the classifier defaults to the
    dataset's own (``classifier`` names another, e.g. to compare)."""
    if kind == "classifier":
        return ClassifierFeatures(classifier or dataset, classifier_weights, resize=resize)
    if kind == "inception":
        return InceptionFeatures(inception_weights)
    raise UserError(f"unknown feature network {kind!r}; valid choices: {', '.join(FEATURE_KINDS)}")


__all__ = ["ClassifierFeatures", "InceptionFeatures", "get_feature_extractor", "FEATURE_KINDS",
           "INCEPTION_WEIGHTS_HELP"]
