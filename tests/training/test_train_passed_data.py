"""``train(cfg, data=...)``: a tensor or a torch Dataset instead of a registered data set name."""

from pathlib import Path

import pytest
import torch

import ddpmkit
from ddpmkit.checkpoint import load_checkpoint
from ddpmkit.cli import main
from ddpmkit.config import load_config
from ddpmkit.data import load_dataset, to_model_range
from ddpmkit.errors import UserError
from ddpmkit.runs import load_run
from ddpmkit.testing.tiny import tiny_overrides, toy_overrides
from ddpmkit.training.trainer import Trainer, train

ROOT = Path(__file__).resolve().parents[2]


def same_state(a, b) -> bool:
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    return ca.step == cb.step and all(
        getattr(ca, part).keys() == getattr(cb, part).keys()
        and all(torch.equal(getattr(ca, part)[k], getattr(cb, part)[k]) for k in getattr(ca, part))
        for part in ("model", "ema"))


class Pairs(torch.utils.data.Dataset):
    """(point, label) items, as a user's Dataset would hand them out."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def moons():
    d = load_dataset("two-moons", n=512, seed=0)
    return d.x, d.y


def test_a_float_image_tensor_trains_exactly_like_the_named_data_set(tmp_path):
    """The digits training set passed as a float tensor in [-1, 1] is the same data: same batches, same run."""
    images = to_model_range(load_dataset("digits").x)
    named = train(load_config(ROOT / "configs" / "digits.toml", tiny_overrides(tmp_path / "named", 3)),
                  progress=False)
    passed = train(load_config(ROOT / "configs" / "digits.toml", tiny_overrides(tmp_path / "passed", 3)),
                   data=images, progress=False)
    assert named.step == passed.step == 3
    assert same_state(tmp_path / "named", tmp_path / "passed")
    stored = load_checkpoint(tmp_path / "passed").config["data"]
    assert (stored["name"], stored["n"], stored["image_size"], stored["channels"]) == ("tensor", len(images), 8, 1)
    assert (tmp_path / "passed" / "samples.png").is_file()
    run = load_run(tmp_path / "passed", device="cpu")
    assert run.item_shape == (1, 8, 8) and run.num_classes is None
    # uint8 pixels are taken as they are
    pixels = load_dataset("digits").x
    train(load_config(ROOT / "configs" / "digits.toml", tiny_overrides(tmp_path / "uint8", 3)), data=pixels,
          progress=False)
    assert same_state(tmp_path / "named", tmp_path / "uint8")


def test_a_labelled_dataset_trains_resumes_bit_exactly_and_samples(tmp_path, capsys):
    x, y = moons()
    ds = Pairs(x, y)

    def cfg(out):
        return load_config(None, toy_overrides(out, 4, **{"data.class_conditional": "true"}))

    train(cfg(tmp_path / "full"), data=ds, progress=False)
    first = train(cfg(tmp_path / "half"), data=ds, progress=False, max_steps=2)
    assert first.step == 2
    with pytest.raises(UserError, match="other data than the data passed now"):
        Trainer(cfg(tmp_path / "half"), data=Pairs(x.flip(0), y.flip(0)), resume=True, progress=False)
    with pytest.raises(UserError, match=r"data.name = 'dataset'.*data=<the same data>, resume=True"):
        Trainer(load_config(tmp_path / "half" / "config.toml"), resume=True, progress=False)
    assert train(cfg(tmp_path / "half"), data=ds, resume=True, progress=False).step == 4
    assert same_state(tmp_path / "full", tmp_path / "half")
    # the run's config.toml records what was passed
    stored = load_config(tmp_path / "half" / "config.toml")
    assert (stored.data.name, stored.data.n, stored.data.class_conditional) == ("dataset", 512, True)

    run = load_run(tmp_path / "full", device="cpu")
    assert run.item_shape == (2,) and run.num_classes == 2
    pipe = ddpmkit.load(tmp_path / "full", device="cpu")
    assert pipe(6, steps=3).shape == (6, 2)
    assert main(["sample", "--checkpoint", str(tmp_path / "full"), "-n", "6", "--steps", "3",
                 "--out", str(tmp_path / "s.png"), "--no-progress"]) == 0
    assert (tmp_path / "s.png").is_file()
    capsys.readouterr()
    # the command line cannot resume it: the data lives in Python
    assert main(["train", "--resume", str(tmp_path / "full"), "--set", "train.steps=6", "--no-progress"]) == 2
    assert "data passed in Python" in capsys.readouterr().err


def test_unlabelled_items_and_a_points_tensor(tmp_path):
    x, _ = moons()
    items = [row for row in x]  # any object with __len__ / __getitem__ whose items are tensors
    train(load_config(None, toy_overrides(tmp_path / "items", 3)), data=items, progress=False)
    train(load_config(None, toy_overrides(tmp_path / "tensor", 3)), data=x.double(), progress=False)
    assert same_state(tmp_path / "items", tmp_path / "tensor")   # the same points (float64 -> float32)
    assert load_checkpoint(tmp_path / "items").config["data"]["name"] == "dataset"
    assert load_checkpoint(tmp_path / "tensor").config["data"]["name"] == "tensor"
    with pytest.raises(UserError, match="has no labels"):
        Trainer(load_config(None, toy_overrides(tmp_path / "c", 3, **{"data.class_conditional": "true"})),
                data=x, progress=False)


@pytest.mark.parametrize("data, message", [
    (torch.zeros(0, 2), "empty"),
    (torch.zeros(4, 0), "empty"),
    (torch.zeros(5), r"shape \(N, C, H, W\) for images or \(N, D\)"),
    (torch.zeros(5, 2, 2), r"shape \(N, C, H, W\) for images or \(N, D\)"),
    (torch.zeros(5, 2, dtype=torch.int64), "uint8 pixels or floating"),
    (torch.zeros(5, 2, dtype=torch.uint8), "uint8 data must be images"),
    (torch.full((3, 1, 8, 8), 2.0), r"must lie in \[-1, 1\]"),
    (torch.tensor([[0.0, float("nan")]]), "NaN"),
    ([], "empty"),
    ([torch.zeros(2), torch.zeros(3)], "differs from item 0"),
    ([(torch.zeros(2), 0), torch.zeros(2)], "differs from item 0"),
    ([(torch.zeros(2), 0.5)], "label must be an integer"),
    ([(torch.zeros(2), -1)], "0..K-1"),
    ([(torch.zeros(2), 1, 2)], r"a \(tensor, label\) pair"),
    (["a"], "expected a tensor"),
    ([torch.zeros(2, 2)], r"\(C, H, W\) for images or \(D,\)"),
    ("digits", "must be a tensor"),
    (42, "must be a tensor"),
])
def test_bad_data_is_a_user_error_and_creates_nothing(tmp_path, data, message):
    with pytest.raises(UserError, match=message):
        train(load_config(None, toy_overrides(tmp_path / "run", 2)), data=data, progress=False)
    assert not (tmp_path / "run").exists()


def test_settings_the_passed_data_contradicts_are_refused(tmp_path):
    x, _ = moons()
    for extra, message in (({"data.n": "100"}, "data.n = 100 but the data passed has 512"),
                           ({"data.data_dir": '"/tmp"'}, "do not apply to data passed")):
        with pytest.raises(UserError, match=message):
            Trainer(load_config(None, toy_overrides(tmp_path / "run", 2, **extra)), data=x, progress=False)
    images = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    with pytest.raises(UserError, match="data.image_size = 16 but the data passed has 8"):
        Trainer(load_config(ROOT / "configs" / "digits.toml",
                            tiny_overrides(tmp_path / "run", 2) + ["data.image_size=16"]), data=images, progress=False)
    # without data, the stand-in names are refused (and never loadable by name)
    with pytest.raises(UserError, match="data passed in Python"):
        Trainer(load_config(None, toy_overrides(tmp_path / "run", 2, **{"data.name": "tensor"})), progress=False)
    with pytest.raises(UserError, match="cannot be loaded by name"):
        load_dataset("tensor")
    assert not (tmp_path / "run").exists()
