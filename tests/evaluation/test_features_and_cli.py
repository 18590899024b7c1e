"""Shipped classifiers, reference-feature cache, the FID floor, and `ddpmkit eval ...` end to end on a
tiny digits checkpoint (the session-wide `tiny_run` fixture: 4 training steps, T = 20)."""

import json
import shutil

import numpy as np
import pytest
import torch

from ddpmkit.cli import main
from ddpmkit.data import load_dataset
from ddpmkit.data.pixels import to_model_range, to_uint8
from ddpmkit.errors import UserError
from ddpmkit.evaluation import fid_of_images, get_feature_extractor, load_classifier, reference_features
from ddpmkit.evaluation.classifier import card_path, classifier_card, weights_path
from ddpmkit.evaluation.fid import sample_count_warning


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPMKIT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.parametrize("name", ["digits", "fashion-mnist"])
def test_shipped_classifier_weights_and_card(name):
    path = weights_path(name)
    if not path.is_file():
        pytest.skip(f"{path} not trained yet (scripts/train_classifier.py --dataset {name})")
    assert path.stat().st_size < 2_000_000
    card = classifier_card(name)
    assert card_path(name).is_file() and card["dataset"] == name
    assert card["test_accuracy"] >= (0.97 if name == "digits" else 0.88)
    net = load_classifier(name)
    assert net.weights_sha256 == card["weights_sha256"]
    c = net.config
    f, z = net.features_and_logits(torch.zeros(2, c.in_channels, c.image_size, c.image_size))
    assert f.shape == (2, net.feature_dim) and z.shape == (2, 10)


def test_digits_classifier_accuracy_on_test_split():
    ext = get_feature_extractor("classifier", "digits")
    test = load_dataset("digits", split="test")
    feats, logits = ext(to_model_range(test.x))
    assert feats.shape == (len(test), 128) and feats.dtype == np.float64
    assert (logits.argmax(1) == test.y.numpy()).mean() > 0.97


def test_features_score_8bit_pixels():
    """Generated images are scored as saved 8-bit images: out-of-range values count as clamped, and a
    change below half a grey level changes nothing; real 8-bit images pass through unchanged."""
    ext = get_feature_extractor("classifier", "digits")
    g = torch.Generator().manual_seed(0)
    levels = torch.randint(0, 256, (6, 1, 8, 8), generator=g)
    real = levels.float() / 127.5 - 1.0
    assert torch.equal(to_uint8(real), levels.to(torch.uint8))
    wiggled = real + (torch.rand(real.shape, generator=g) - 0.5) * 0.99 / 127.5
    overshoot = real * 1.5  # values beyond [-1, 1] where |real| > 2/3
    f_real, z_real = ext(real)
    f_wig, z_wig = ext(wiggled)
    assert np.array_equal(f_real, f_wig) and np.array_equal(z_real, z_wig)
    assert np.array_equal(ext(overshoot)[0], ext(overshoot.clamp(-1, 1))[0])
    assert not np.array_equal(ext(overshoot)[0], f_real)


def test_feature_network_mismatch_errors():
    ext = get_feature_extractor("classifier", "digits")
    with pytest.raises(UserError, match="1-channel images but the samples have 3 channels"):
        ext.check((3, 8, 8))
    with pytest.raises(UserError, match="8x8 images but the samples are 28x28"):
        ext(torch.zeros(2, 1, 28, 28))
    with pytest.raises(UserError, match="needs images"):
        ext.check((2,))
    resized = get_feature_extractor("classifier", "digits", resize=True)
    assert resized(torch.zeros(2, 1, 16, 16))[0].shape == (2, 128)
    with pytest.raises(UserError, match="no classifier for dataset 'cifar10'"):
        get_feature_extractor("classifier", "cifar10")
    with pytest.raises(UserError, match="valid choices"):
        get_feature_extractor("vgg", "digits")


def test_inception_needs_a_local_weights_file(tmp_path):
    with pytest.raises(UserError, match="weights-inception-2015-12-05"):
        get_feature_extractor("inception", "cifar10")
    with pytest.raises(UserError, match="does not exist"):
        get_feature_extractor("inception", "cifar10", inception_weights=tmp_path / "missing.pth")
    fake = tmp_path / "w.pth"
    fake.write_bytes(b"x")
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:  # this environment: torch-fidelity needs torchvision, which is absent
        with pytest.raises(UserError, match="torch-fidelity"):
            get_feature_extractor("inception", "cifar10", inception_weights=fake)
    else:  # never unpickle a file that a tensors-only load refuses
        with pytest.raises(UserError, match="not a plain PyTorch state dict"):
            get_feature_extractor("inception", "cifar10", inception_weights=fake)


def test_fid_floor_is_far_below_noise_on_digits():
    """FID(1,000 real training images, test set) is small; FID(noise, test set) is large."""
    ext = get_feature_extractor("classifier", "digits")
    test = to_model_range(load_dataset("digits", split="test").x)
    train = to_model_range(load_dataset("digits", split="train", n=1000, seed=0).x)
    noise = torch.randn(1000, 1, 8, 8, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    floor, worst = fid_of_images(ext, test, train), fid_of_images(ext, test, noise)
    print(f"digits FID floor {floor['fid']:.3f} vs noise {worst['fid']:.3f}")
    assert floor["fid"] < 3.0 and worst["fid"] > 30.0 and worst["fid"] > 20 * floor["fid"]
    assert floor["precision"] > 0.8 and floor["recall"] > 0.6 and worst["recall"] < 0.3
    assert floor["coverage"] == 1.0 and floor["inception_score"] > 9.0
    assert worst["inception_score"] < floor["inception_score"] / 2


def test_reference_features_are_cached_with_a_key(tmp_path):
    ext = get_feature_extractor("classifier", "digits")
    a = reference_features(ext, "digits", split="test", n=100, cache_dir=tmp_path)
    b = reference_features(ext, "digits", split="test", n=100, cache_dir=tmp_path)
    assert not a.cached and b.cached and a.path == b.path and a.path.parent == tmp_path
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_allclose(b.mu, a.features.mean(0))
    c = reference_features(ext, "digits", split="test", n=120, cache_dir=tmp_path)
    assert not c.cached and c.path != a.path
    assert {"pixels_sha256", "feature_weights_sha256", "split", "n"} <= set(a.meta)
    d = reference_features(ext, "digits", split="train", n=100, cache_dir=tmp_path)
    assert d.meta["pixels_sha256"] != a.meta["pixels_sha256"]


def test_sample_count_warning_states_n():
    assert "n = 500" in sample_count_warning(500, 128)
    assert "singular" in sample_count_warning(100, 128)
    assert sample_count_warning(10000, 128) is None


# --- the command ------------------------------------------------------------------------------

def test_eval_nll_command(tiny_run, tmp_path, capsys):
    out = tmp_path / "nll.json"
    assert main(["eval", "nll", "--checkpoint", str(tiny_run), "-n", "12", "--batch-size", "5", "--json", str(out),
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "total (NLL bound)" in text and "decoder L_0" in text
    d = json.loads(out.read_text())
    assert d["n"] == 12 and d["timesteps"] == 20 and len(d["per_t"]["vb_bpd"]) == 20
    assert d["total_bpd"] == pytest.approx(d["prior_bpd"] + d["kl_bpd"] + d["decoder_bpd"])
    assert d["total_bpd_se"] > 0 and d["ema"] is True and d["dataset"] == "digits"


def test_eval_fid_command(tiny_run, tmp_path, capsys):
    out = tmp_path / "fid.json"
    assert main(["eval", "fid", "--checkpoint", str(tiny_run), "-n", "40", "--steps", "3", "--json", str(out),
                 "--ref-n", "60", "--no-progress"]) == 0
    cap = capsys.readouterr()
    assert "n = 40" in cap.err and "warning" in cap.err  # too few samples: warned, n stated
    assert "FID" in cap.out and "precision" in cap.out and "classes" in cap.out
    d = json.loads(out.read_text())
    for key in ("fid", "precision", "recall", "inception_score", "coverage", "mean_max_prob", "seconds_per_image"):
        assert np.isfinite(d[key]), key
    assert d["n"] == 40 and d["ref_n"] == 60 and d["steps"] == 3 and d["features"] == "classifier:digits"
    assert d["spacing"] == "default" and d["clip_x0"] is True
    # the second run reuses the cached reference features
    assert main(["eval", "fid", "--checkpoint", str(tiny_run), "-n", "40", "--steps", "3", "--ref-n", "60",
                 "--spacing", "quadratic", "--no-clip", "--json", str(out), "--no-progress"]) == 0
    cap = capsys.readouterr().out
    assert "[cached]" in cap and "quadratic spacing, x0 not clipped" in cap
    d2 = json.loads(out.read_text())
    assert d2["spacing"] == "quadratic" and d2["clip_x0"] is False


def test_eval_bad_input(tiny_run, tmp_path, capsys):
    # a checkpoint without EMA weights: a clear error, --no-ema proceeds
    run = tmp_path / "noema"
    shutil.copytree(tiny_run, run)
    for ckpt in (run / "checkpoints").glob("step_*"):
        (ckpt / "ema.safetensors").unlink()
        state = json.loads((ckpt / "state.json").read_text())
        state["has_ema"] = False
        state["files"].pop("ema.safetensors")  # a checkpoint saved without EMA records no such file
        (ckpt / "state.json").write_text(json.dumps(state))
    assert main(["eval", "nll", "--checkpoint", str(run), "-n", "2", "--no-progress"]) == 2
    assert "no EMA weights" in capsys.readouterr().err
    assert main(["eval", "nll", "--checkpoint", str(run), "-n", "2", "--no-progress", "--no-ema"]) == 0
    capsys.readouterr()
    # dataset / feature-network mismatch: 8x8 digits samples vs the 28x28 Fashion-MNIST classifier
    if weights_path("fashion-mnist").is_file():
        assert main(["eval", "fid", "--checkpoint", str(tiny_run), "-n", "10", "--classifier", "fashion-mnist",
                     "--no-progress"]) == 2
        assert "28x28 images but the samples are 8x8" in capsys.readouterr().err
    # too few samples for FID at all
    assert main(["eval", "fid", "--checkpoint", str(tiny_run), "-n", "3", "--no-progress"]) == 2
    assert "too few samples" in capsys.readouterr().err


def test_eval_rate_distortion_command(tiny_run, tmp_path, capsys):
    out = tmp_path / "rd"
    assert main(["eval", "rate-distortion", "--checkpoint", str(tiny_run), "-n", "6", "--out", str(out),
                 "--columns", "3", "--trajectory-n", "2", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "lossless" in text
    for name in ("rate_distortion.csv", "rate_distortion.json", "rate_distortion.png", "progressive_generation.png"):
        assert (out / name).is_file(), name
    d = json.loads((out / "rate_distortion.json").read_text())
    assert len(d["rate_bpd"]) == 20 and np.all(np.diff(d["rate_bpd"]) <= 1e-9)
    assert d["rate_bpd"][0] + d["decoder_bpd"] == pytest.approx(d["total_bpd"])
