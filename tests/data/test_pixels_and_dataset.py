"""Pixel conversion, the in-memory Dataset, random flips and the registry's errors."""

import numpy as np
import pytest
import torch

from ddpmkit.data import DATASETS, DataError, Dataset, load_dataset, to_model_range, to_uint8
from ddpmkit.data.dataset import resize_images


def test_uint8_round_trip_is_exact_for_every_value():
    x = torch.arange(256, dtype=torch.uint8)
    f = to_model_range(x)
    assert f.dtype == torch.float32
    assert f[0] == -1.0 and f[255] == 1.0 and float(f.min()) >= -1 and float(f.max()) <= 1
    assert torch.equal(to_uint8(f), x)
    assert torch.equal(to_uint8(f.double()), x)
    assert torch.equal(to_uint8(f.half()), x)  # 256 levels survive even float16


def test_to_uint8_clamps_and_rounds_and_to_model_range_rejects_floats():
    assert to_uint8(torch.tensor([-3.0, 5.0, 0.0])).tolist() == [0, 255, 128]  # 127.5 rounds to even 128
    assert to_uint8(torch.tensor([-1 + 0.4 / 127.5, -1 + 0.6 / 127.5])).tolist() == [0, 1]
    with pytest.raises(TypeError, match="uint8"):
        to_model_range(torch.zeros(3))


def _images(n=6, c=1, s=4):
    return torch.arange(n * c * s * s, dtype=torch.int64).remainder(256).to(torch.uint8).reshape(n, c, s, s)


def test_dataset_batch_shape_len_and_fields():
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    ds = Dataset(_images(), y, 3, "image", "test-set")
    assert len(ds) == 6 and ds.shape == (1, 4, 4) and ds.channels == 1 and ds.image_size == 4
    x, yb = ds.batch(torch.tensor([4, 1]))
    assert x.dtype == torch.float32 and x.shape == (2, 1, 4, 4)
    assert torch.equal(to_uint8(x), ds.x[[4, 1]]) and yb.tolist() == [1, 1]
    assert (ds.name, ds.split, ds.kind, ds.num_classes) == ("test-set", "train", "image", 3)
    pts = Dataset(torch.randn(5, 2), None, None, "points", "p")
    xp, yp = pts.batch([0, 3])
    assert xp.shape == (2, 2) and yp is None and torch.equal(xp, pts.x[[0, 3]])


def test_dataset_validates_its_fields():
    with pytest.raises(ValueError, match="uint8"):
        Dataset(torch.zeros(2, 1, 4, 4), None, None, "image", "bad")
    with pytest.raises(ValueError, match="labels must lie"):
        Dataset(_images(2), torch.tensor([0, 5]), 3, "image", "bad")
    with pytest.raises(ValueError, match="kind"):
        Dataset(_images(2), None, None, "video", "bad")


def test_unknown_dataset_and_split_errors_name_the_valid_ones():
    with pytest.raises(DataError) as err:
        load_dataset("mnist-of-doom")
    assert all(name in str(err.value) for name in DATASETS)
    assert isinstance(err.value, ValueError)
    with pytest.raises(DataError, match="train, test"):
        load_dataset("two-moons", split="validation")
    with pytest.raises(DataError, match="channels must be one of 1, 3"):
        load_dataset("digits", channels=2)


@pytest.mark.parametrize("name", ["swiss-roll", "two-moons", "8gaussians", "checkerboard"])
def test_toy_sets_are_deterministic_and_shaped(name):
    a = load_dataset(name, n=500, seed=1)
    b = load_dataset(name, n=500, seed=1)
    c = load_dataset(name, n=500, seed=2)
    test = load_dataset(name, n=500, seed=1, split="test")
    assert a.kind == "points" and a.x.shape == (500, 2) and a.x.dtype == torch.float32 and a.shape == (2,)
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x) and not torch.equal(a.x, test.x)
    assert float(a.x.abs().max()) < 6.0 and 0.5 < float(a.x.std()) < 3.0
    if name in ("two-moons", "8gaussians"):
        k = {"two-moons": 2, "8gaussians": 8}[name]
        assert a.num_classes == k and a.y.shape == (500,) and set(a.y.tolist()) == set(range(k))
    else:
        assert a.y is None and a.num_classes is None
    assert len(load_dataset(name)) == 10_000


def test_eight_gaussians_labels_match_the_nearest_centre():
    ds = load_dataset("8gaussians", n=400)
    ang = np.arctan2(ds.x[:, 1].numpy(), ds.x[:, 0].numpy())
    nearest = np.round(ang / (2 * np.pi / 8)).astype(int) % 8
    assert (nearest == ds.y.numpy()).mean() > 0.97


def test_digits_shape_labels_and_fixed_split():
    train, test = load_dataset("digits"), load_dataset("digits", split="test")
    assert train.shape == (1, 8, 8) and train.num_classes == 10 and train.x.dtype == torch.uint8
    assert len(train) + len(test) == 1797 and len(test) == 359
    assert set(train.y.tolist()) == set(range(10)) and int(train.x.max()) == 255
    sub = load_dataset("digits", n=100, seed=5)
    assert len(sub) == 100 and torch.equal(sub.x, load_dataset("digits", n=100, seed=5).x)
    big = load_dataset("digits", n=20, image_size=16, channels=3)
    assert big.shape == (3, 16, 16)


def test_resize_images_keeps_constants_and_crops_the_centre():
    x = np.full((3, 2, 10, 20), 77, np.uint8)
    x[:, :, :, 5:15] = 200  # the centre square of the wide image
    out = resize_images(x, 4)  # 10 x 20 -> 4 x 8, crop columns 2..5 = original columns 5..15
    assert out.shape == (3, 2, 4, 4) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - 200).max() <= 10  # only the bright middle survives (bicubic rings a little)
    assert np.array_equal(resize_images(np.full((2, 1, 8, 8), 9, np.uint8), 32), np.full((2, 1, 32, 32), 9))
