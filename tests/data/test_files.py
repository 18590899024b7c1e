"""File formats: IDX (Fashion-MNIST), CIFAR-10 pickle batches, image folders."""

import gzip
import pickle
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from ddpmkit.data import DataError, load_dataset, read_cifar_batch, read_idx


def idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.asarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.tobytes()


def write_fashion(folder, n_train=12, n_test=5, gz=True):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{prefix}-{kind}-ubyte"
            data = idx_bytes(arr)
            if gz:
                (folder / (name + ".gz")).write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
        out[prefix] = (images, labels)
    return out


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_small_idx_files(tmp_path, gz):
    arrays = write_fashion(tmp_path / "fm", gz=gz)
    train = load_dataset("fashion-mnist", data_dir=tmp_path / "fm")
    test = load_dataset("fashion-mnist", data_dir=str(tmp_path / "fm"), split="test")
    assert len(train) == 12 and len(test) == 5 and train.shape == (1, 28, 28) and train.num_classes == 10
    assert torch.equal(train.x[:, 0], torch.from_numpy(arrays["train"][0]))
    assert train.y.tolist() == arrays["train"][1].tolist()
    assert train.class_names[9] == "Ankle boot"
    rgb32 = load_dataset("fashion-mnist", data_dir=tmp_path / "fm", image_size=32, channels=3, n=4)
    assert rgb32.shape == (3, 32, 32) and len(rgb32) == 4
    assert torch.equal(rgb32.x[:, 0], rgb32.x[:, 2])


def test_read_idx_checks_magic_and_length(tmp_path):
    good = tmp_path / "a-idx3-ubyte"
    good.write_bytes(idx_bytes(np.arange(24).reshape(2, 3, 4)))
    assert read_idx(good).shape == (2, 3, 4) and read_idx(good)[1, 2, 3] == 23
    with pytest.raises(DataError, match="expected 2049"):
        read_idx(good, expected_magic=2049)
    bad = tmp_path / "bad-idx3-ubyte"
    bad.write_bytes(b"\x12\x34" + idx_bytes(np.zeros((2, 2)))[2:])
    with pytest.raises(DataError, match="bad magic"):
        read_idx(bad)
    short = tmp_path / "short-idx3-ubyte"
    short.write_bytes(idx_bytes(np.zeros((2, 3, 4)))[:-5])
    with pytest.raises(DataError, match="truncated"):
        read_idx(short)
    notgz = tmp_path / "x.gz"
    notgz.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot read IDX"):
        read_idx(notgz)


def test_corrupt_fashion_file_is_a_clear_error(tmp_path):
    write_fashion(tmp_path, gz=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros((2, 2, 2))))  # images magic
    with pytest.raises(DataError, match="magic number 2051 but expected 2049"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", data_dir=tmp_path / "nowhere")
    msg = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "--data-dir" in msg
    assert "make fashion-mnist-data" in msg and "nowhere" in msg
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(DataError, match="train-labels-idx1-ubyte"):
        load_dataset("fashion-mnist", data_dir=tmp_path / "half")


# --- CIFAR-10 ---------------------------------------------------------------------------------

def write_cifar(folder, n=4, protocol=2, str_keys=False):
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [(i + j) % 10 for j in range(n)]
        d = {b"batch_label": b"batch", b"labels": labels, b"data": data, b"filenames": [b"a.png"] * n}
        if str_keys:
            d = {k.decode(): v for k, v in d.items()}
        (folder / name).write_bytes(pickle.dumps(d, protocol=protocol))
        written[name] = (data, labels)
    return written


@pytest.mark.parametrize("protocol,str_keys", [(2, False), (4, True), (5, False)])
def test_cifar10_batches_load_with_shapes_and_labels(tmp_path, protocol, str_keys):
    written = write_cifar(tmp_path / "cifar-10-batches-py", protocol=protocol, str_keys=str_keys)
    train = load_dataset("cifar10", data_dir=tmp_path)  # the folder *containing* cifar-10-batches-py
    test = load_dataset("cifar10", data_dir=tmp_path / "cifar-10-batches-py", split="test")
    assert len(train) == 20 and len(test) == 4 and train.shape == (3, 32, 32) and train.num_classes == 10
    data, labels = written["data_batch_2"]
    assert train.y[4:8].tolist() == labels
    assert torch.equal(train.x[4], torch.from_numpy(data[0].reshape(3, 32, 32)))  # channel planes
    assert test.y.tolist() == written["test_batch"][1]
    gray = load_dataset("cifar10", data_dir=tmp_path, channels=1, n=3)
    assert gray.shape == (1, 32, 32) and len(gray) == 3


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_cifar_pickle_with_a_forbidden_global_is_rejected(tmp_path):
    target = tmp_path / "pwned"
    evil = tmp_path / "data_batch_1"
    evil.write_bytes(pickle.dumps({b"data": _Evil(str(target)), b"labels": [0]}, protocol=2))
    with pytest.raises(DataError, match="not allowed"):
        read_cifar_batch(evil)
    assert not target.exists()
    builtin = tmp_path / "b"
    builtin.write_bytes(pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": print}))
    with pytest.raises(DataError, match="builtins.print"):
        read_cifar_batch(builtin)


def test_cifar_missing_files_and_dir(tmp_path):
    with pytest.raises(DataError, match="--data-dir"):
        load_dataset("cifar10")
    write_cifar(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset("cifar10", data_dir=tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(DataError, match=r"\(N, 3072\)"):
        load_dataset("cifar10", data_dir=tmp_path, split="test")


# --- image folder -----------------------------------------------------------------------------

def _stripes(w=40, h=20):
    """Red left quarter, green middle half, blue right quarter."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 4, 0] = 255
    arr[:, w // 4: 3 * w // 4, 1] = 255
    arr[:, 3 * w // 4:, 2] = 255
    return arr


def write_folder(root, with_classes=False):
    a, b = (root / "cats", root / "dogs") if with_classes else (root, root / "nested" / "deeper")
    a.mkdir(parents=True, exist_ok=True)
    b.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_stripes()).save(a / "wide.png")
    Image.fromarray(_stripes().transpose(1, 0, 2).copy()).save(b / "tall.JPG", quality=95)
    Image.fromarray(_stripes(16, 16)[..., 1]).save(b / "gray.jpeg")
    (a / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (a / "notes.txt").write_text("ignored")


def test_image_folder_resizes_crops_and_skips_unreadable_with_one_warning(tmp_path):
    write_folder(tmp_path)
    with pytest.warns(UserWarning, match="skipped 1 unreadable") as record:
        ds = load_dataset("image-folder", data_dir=tmp_path, image_size=10)
    assert len([w for w in record if "unreadable" in str(w.message)]) == 1
    assert len(ds) == 3 and ds.shape == (3, 10, 10) and ds.y is None and ds.num_classes is None
    order = ["nested/deeper/gray.jpeg", "nested/deeper/tall.JPG", "wide.png"]
    wide = ds.x[order.index("wide.png")]
    centre = wide[:, :, 2:8].float()
    assert centre[1].min() > 200 and centre[0].max() < 60 and centre[2].max() < 60  # only the green middle
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gray = load_dataset("image-folder", data_dir=tmp_path, image_size=10, channels=1)
    assert gray.shape == (1, 10, 10)
    g = gray.x[order.index("wide.png"), 0, :, 2:8].float()
    assert abs(float(g.mean()) - 149) < 12  # ITU-R 601 luma of pure green = 149


def test_image_folder_labels_from_subfolders(tmp_path):
    write_folder(tmp_path, with_classes=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = load_dataset("image-folder", data_dir=tmp_path, image_size=8)
    assert ds.class_names == ("cats", "dogs") and ds.num_classes == 2
    assert ds.y.tolist() == [0, 1, 1]  # cats/wide.png, dogs/gray.jpeg, dogs/tall.JPG


def test_image_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        load_dataset("image-folder", data_dir=tmp_path / "empty", image_size=8)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="skipped 1"), pytest.raises(DataError, match="no readable"):
        load_dataset("image-folder", data_dir=tmp_path / "bad", image_size=8)
    with pytest.raises(DataError, match="image_size"):
        load_dataset("image-folder", data_dir=tmp_path / "empty")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("image-folder", data_dir=tmp_path / "nope", image_size=8)
