"""The bits-back codec: exact round trips, its code length against the bound, and clean failures."""

import hashlib
import math

import numpy as np
import pytest
import torch

from ddpmkit.cli import main
from ddpmkit.coding import BitsBackCodec, CodecError, CodecSettings, schedule
from ddpmkit.coding.codec import HEADER, compress_array, decompress_bytes, read_header
from ddpmkit.diffusion import GaussianDiffusion
from ddpmkit.diffusion.losses import bpd_terms
from ddpmkit.diffusion.timesteps import respaced
from ddpmkit.networks.factory import build_network, network_config
from ddpmkit.testing.gaussian_data import QuantisedGaussian

pytest.importorskip("constriction")


def tiny_unet(learn_sigma: bool, seed: int = 0):
    torch.manual_seed(seed)
    net = build_network(network_config("unet", None, ch=8, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[4],
                                       num_heads=2, norm_groups=4, in_channels=1, image_size=8,
                                       learn_sigma=learn_sigma)).eval()

    def fn(x, t):
        return net(x, t)
    return fn


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 1, 8, 8), dtype=np.uint8)


@pytest.mark.parametrize("variance", ["fixed_small", "learned_range"])
@pytest.mark.parametrize("steps", [20, 6, 1])
def test_round_trip_is_exact(variance, steps):
    process = GaussianDiffusion.from_schedule("linear", 20, variance=variance)
    if steps < 20:
        process = respaced(process, steps)
    codec = BitsBackCodec(tiny_unet(variance == "learned_range"), process)
    x = images(5, seed=steps)
    enc = codec.encode(x)
    assert np.array_equal(codec.decode(enc.payload, enc.seed_prefix, 5, (1, 8, 8)), x)
    # the payload is the bits-back code plus the borrowed initial bits (to the 32-bit word)
    assert abs(32 * len(enc.payload) - (enc.net_bits + enc.initial_bits)) <= 64


def test_round_trip_all_lanes_at_once_and_one_lane():
    process = GaussianDiffusion.from_schedule("linear", 10)
    fn = tiny_unet(False)
    x = images(6, seed=3)
    for s in (CodecSettings(ramp=0, lanes=4), CodecSettings(ramp=1, lanes=1), CodecSettings(resolution=6, tail=8)):
        codec = BitsBackCodec(fn, process, s)
        enc = codec.encode(x)
        assert np.array_equal(codec.decode(enc.payload, enc.seed_prefix, 6, (1, 8, 8)), x)


def test_schedule_runs_every_stage_once_in_order():
    for n, T, lanes, ramp in [(7, 5, 3, 2), (4, 3, 8, 0), (5, 1, 2, 1)]:
        seen = {}
        for ids, stages in schedule(n, T, lanes, ramp):
            assert len(ids) <= lanes
            for i, s in zip(ids.tolist(), stages.tolist(), strict=True):
                assert seen.get(i, 0) == s - 1  # consecutive stages 1..T
                seen[i] = s
        assert seen == {i: T for i in range(n)}
    # ramp: one lane until `ramp` images are done
    first = schedule(6, 4, 8, 2)
    assert all(len(ids) == 1 for ids, _ in first[:8])


def test_code_length_matches_the_closed_form_bound():
    """With the exact denoiser of Gaussian data (learned variance = the true reverse variance), the
    bits-back code length per dimension equals the bound (bpd_terms) up to its sampling noise, the
    bound sits just above the data's exact -log2 P(x0), and the file adds only the stated overhead."""
    data = QuantisedGaussian(0.1, 0.3)
    process = GaussianDiffusion.from_schedule("linear", 50, variance="learned_range")
    exact = data.model_fn(process)

    def fn(x, t):
        return exact(x.reshape(x.shape[0], -1).double(), t).reshape(x.shape[0], -1, 8, 8).float()

    x0, nll = data.quantised(64, 64, seed=1)
    pix = ((x0 + 1) * 127.5).round().numpy().astype(np.uint8).reshape(64, 1, 8, 8)
    s = CodecSettings()
    enc = BitsBackCodec(fn, process, s).encode(pix)
    dims = pix.size
    bound = bpd_terms(process, lambda x, t: fn(x.reshape(-1, 1, 8, 8), t).reshape(x.shape[0], -1), x0.float(),
                      generator=torch.Generator().manual_seed(0))["total_bpd"].mean().item()
    assert abs(bound - nll.mean().item()) < 0.05
    assert abs(enc.net_bits / dims - bound) < 0.08
    # initial bits: about one image's first two latents, 2 log2(sqrt(2 pi e) 2^(r+1)) bits per dimension at most
    per_dim = 2 * (s.resolution + 1 + math.log2(math.sqrt(2 * math.pi * math.e)))
    assert 0 < enc.initial_bits <= per_dim * 64 + 32 * 64


@pytest.fixture(scope="module")
def tiny(tiny_run):
    from ddpmkit.runs import load_run

    return load_run(tiny_run)


def _other(tiny_run):
    from ddpmkit.runs import load_run

    run = load_run(tiny_run)
    with torch.no_grad():
        next(run.model.parameters()).add_(1e-3)
    return run


def test_file_round_trip_and_header(tiny, tiny_run):
    x = images(3, seed=7)
    blob, info = compress_array(tiny, x, steps=8, threads=1)
    hd = read_header(blob)
    assert (hd["n"], hd["c"], hd["h"], hd["w"], hd["steps"], hd["threads"]) == (3, 1, 8, 8, 8, 1)
    assert len(blob) == HEADER.size + 4 * hd["words"] + 16
    back, _ = decompress_bytes(tiny, blob)
    assert np.array_equal(back, x)
    with pytest.raises(CodecError, match="another model"):
        decompress_bytes(_other(tiny_run), blob)


def _reseal(blob: bytes) -> bytes:
    body = blob[:-16]
    return body + hashlib.sha256(body).digest()[:16]


def test_damaged_files_give_one_clear_error(tiny):
    blob, _ = compress_array(tiny, images(2, seed=1), steps=5, threads=1)
    flipped = bytearray(blob)
    flipped[HEADER.size + 3] ^= 0x10
    cases = {"checksum": bytes(flipped), "truncated": blob[:-5], "magic": b"PNG" + blob[3:],
             "fingerprint": _reseal(blob[:23] + bytes(16) + blob[39:])}
    for what, bad in cases.items():
        with pytest.raises(CodecError, match=what):
            decompress_bytes(tiny, bad)
    # a payload that passes the checksum but is not this model's stream never yields images silently
    bad = bytearray(blob)
    bad[HEADER.size + 8] ^= 0xFF
    with pytest.raises(CodecError):
        decompress_bytes(tiny, _reseal(bytes(bad)))


def test_wrong_images_are_refused(tiny):
    for bad, what in [(np.zeros((2, 1, 9, 8), np.uint8), "takes 1 x 8 x 8"),
                      (np.zeros((2, 3, 8, 8), np.uint8), "takes"), (np.zeros((2, 1, 8, 8), np.float32), "uint8")]:
        with pytest.raises(CodecError, match=what):
            compress_array(tiny, bad)


def test_cli_compress_decompress_reports_file_size(tiny_run, tmp_path, capsys):
    from PIL import Image

    x = images(4, seed=2)
    src = tmp_path / "in"
    src.mkdir()
    for i, a in enumerate(x):
        Image.fromarray(a[0]).save(src / f"{i}.png")
    f = tmp_path / "x.ddpm"
    assert main(["compress", str(src), "--checkpoint", str(tiny_run), "--out", str(f), "--steps", "10",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"{8 * f.stat().st_size / x.size:.4f} bits/dim" in printed
    out = tmp_path / "out"
    assert main(["decompress", str(f), "--checkpoint", str(tiny_run), "--out", str(out), "--npy",
                 str(tmp_path / "x.npy"), "--progress", "19,10,0", "--no-progress"]) == 0
    assert np.array_equal(np.load(tmp_path / "x.npy"), x)
    assert np.array_equal(np.stack([np.asarray(Image.open(out / f"{i:05d}.png"))[None] for i in range(4)]), x)
    fig = np.asarray(Image.open(tmp_path / "out_progress.png").convert("L"), dtype=np.float64)
    assert fig.shape[1] > fig.shape[0] / 4 and fig.std() > 5  # three columns of x_t / x0 drawn, not blank
    assert "t = 19, 11, 0" in capsys.readouterr().out  # 10 is not among the 10 kept steps of 20; 11 is nearest


def test_cli_bad_input_exits_2_and_writes_nothing(tiny_run, tmp_path, capsys):
    from PIL import Image

    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(rgb)
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(big)
    f = tmp_path / "x.ddpm"
    for inp in (rgb, big, tmp_path / "missing.png"):
        assert main(["compress", str(inp), "--checkpoint", str(tiny_run), "--out", str(f), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("ddpmkit: error: ") and len(err.strip().splitlines()) == 1
        assert not f.exists()
    np.save(tmp_path / "x.npy", images(2))
    assert main(["compress", str(tmp_path / "x.npy"), "--checkpoint", str(tiny_run), "--out", str(f), "--steps", "3",
                 "--no-progress"]) == 0
    data = f.read_bytes()
    f.write_bytes(data[:-1])
    out = tmp_path / "dec"
    assert main(["decompress", str(f), "--checkpoint", str(tiny_run), "--out", str(out), "--no-progress"]) == 2
    assert "truncated" in capsys.readouterr().err and not out.exists()
    # refuses to overwrite
    f.write_bytes(data)
    assert main(["compress", str(tmp_path / "x.npy"), "--checkpoint", str(tiny_run), "--out", str(f),
                 "--no-progress"]) == 2
    assert f.read_bytes() == data


@pytest.mark.parametrize("command", ["compress", "decompress"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("usage: ddpmkit " + command)
