"""Small CNN classifiers used as feature networks for FID / precision-recall / Inception Score on
the built-in grayscale datasets (Fashion-MNIST 28x28, digits 8x8).

Features are the penultimate layer (global-average-pooled, ``feature_dim`` wide); logits feed the
Inception Score and class coverage.  Inputs are images in model range [-1, 1], (N, C, H, W).
Weights ship in ``ddpmkit/assets/classifier-NAME.safetensors`` with a JSON card beside them
(architecture, test accuracy, the command that trained them); ``scripts/train_classifier.py``
reproduces them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"


@dataclass(frozen=True)
class ClassifierConfig:
    in_channels: int = 1
    image_size: int = 28
    num_classes: int = 10
    widths: tuple[int, int, int] = (32, 64, 128)
    pool_first: bool = True  # 28x28: pool after each of the first two stages; 8x8: only after the second


# per built-in dataset: the architecture the script trains
CLASSIFIER_CONFIGS = {
    "fashion-mnist": ClassifierConfig(1, 28, 10, (32, 64, 128), True),
    "digits": ClassifierConfig(1, 8, 10, (32, 64, 128), False),
}


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallClassifier(nn.Module):
    """conv-BN-ReLU x 3 with max-pooling, global average pooling, then one linear layer."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        w1, w2, w3 = config.widths
        layers = [_block(config.in_channels, w1)]
        if config.pool_first:
            layers.append(nn.MaxPool2d(2))
        layers += [_block(w1, w2), nn.MaxPool2d(2), _block(w2, w3)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(w3, config.num_classes)

    @property
    def feature_dim(self) -> int:
        return self.config.widths[-1]

    def check_input(self, x: torch.Tensor) -> None:
        c = self.config
        want = (c.in_channels, c.image_size, c.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            got = tuple(x.shape[1:]) if x.ndim == 4 else tuple(x.shape)
            raise UserError(f"the feature network expects images of shape {want} (channels, height, width) but "
                            f"got {got}; it was trained for {c.in_channels}-channel {c.image_size}x{c.image_size} "
                            "images, so pick the classifier of the dataset the model was trained on")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features (N, feature_dim)."""
        return self.body(x).mean(dim=(2, 3))

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return f, self.head(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def weights_path(name: str) -> Path:
    return ASSETS_DIR / f"classifier-{name}.safetensors"


def card_path(name: str) -> Path:
    return ASSETS_DIR / f"classifier-{name}.json"


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def classifier_names() -> tuple[str, ...]:
    return tuple(CLASSIFIER_CONFIGS)


def load_classifier(name: str, path: str | Path | None = None) -> SmallClassifier:
    """The shipped classifier for a built-in dataset ('fashion-mnist' or 'digits'), in eval mode."""
    from safetensors.torch import load_file

    if name not in CLASSIFIER_CONFIGS:
        raise UserError(f"no classifier for dataset {name!r}; classifiers exist for: {', '.join(CLASSIFIER_CONFIGS)} "
                        "(use --features inception for RGB datasets such as cifar10)")
    path = Path(path) if path is not None else weights_path(name)
    if not path.is_file():
        raise UserError(f"classifier weights {path} are missing; train them with "
                        f"`python scripts/train_classifier.py --dataset {name}`")
    model = SmallClassifier(CLASSIFIER_CONFIGS[name])
    try:
        model.load_state_dict(load_file(str(path)))
    except RuntimeError as e:
        raise UserError(f"classifier weights {path} do not match the architecture: {e}") from None
    model.weights_sha256 = file_sha256(path)
    return model.eval()


def classifier_card(name: str) -> dict:
    p = card_path(name)
    return json.loads(p.read_text()) if p.is_file() else {}


def config_dict(config: ClassifierConfig) -> dict:
    d = asdict(config)
    d["widths"] = list(d["widths"])
    return d
