"""Mixed precision: the autocast dtype per device and request, the fp32 fallback line, bf16 training
on CPU (fp32 weights, bit-exact resume) and bf16 sampling."""

import dataclasses
import json
import logging
import types
from pathlib import Path

import pytest
import torch

from ddpmkit.checkpoint import load_checkpoint
from ddpmkit.config import load_config
from ddpmkit.errors import UserError
from ddpmkit.networks import cpu_fast
from ddpmkit.networks import precision as P
from ddpmkit.runs import generate, load_run
from ddpmkit.testing.tiny import TINY_UNET, tiny_overrides
from ddpmkit.training.trainer import train

ROOT = Path(__file__).resolve().parents[2]
needs_bf16 = pytest.mark.skipif(not P.cpu_has_native_bf16(),
                                reason="this CPU has no native bf16 (AVX512_BF16 or AMX): bf16 falls back to fp32")


def test_autocast_dtype_per_device(monkeypatch):
    assert P.autocast_dtype("fp32", "cpu") == (None, None)
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: True)
    assert P.autocast_dtype("bf16", "cpu") == (torch.bfloat16, None)
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: False)
    dtype, line = P.autocast_dtype("bf16", "cpu")
    assert dtype is None and "no native bf16" in line and "running in fp32" in line
    dtype, line = P.autocast_dtype("fp16", "cpu")
    assert dtype is None and "CUDA only" in line
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert P.autocast_dtype("bf16", "cuda") == (torch.bfloat16, None)
    assert P.autocast_dtype("fp16", "cuda:1") == (torch.float16, None)
    with pytest.raises(ValueError, match="precision must be one of"):
        P.autocast_dtype("int8", "cpu")


def test_with_autocast_casts_the_output_back_and_keeps_num_classes():
    lin = torch.nn.Linear(4, 4)

    def fn(x):
        return lin(x)
    fn.num_classes = 3
    assert P.with_autocast(fn, "cpu", None) is fn
    wrapped = P.with_autocast(fn, "cpu", torch.bfloat16)
    x = torch.randn(2, 4)
    out = wrapped(x)
    assert out.dtype == torch.float32 and wrapped.num_classes == 3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = lin(x).float()  # the same bf16 computation
    assert torch.equal(out, want)
    assert not torch.equal(out, lin(x))  # it did run in bf16


def _sets(out, steps, precision):
    return tiny_overrides(out, steps, **{"train.precision": precision, "data.flip": "true",
                                         "model.options": TINY_UNET[:-1] + ", dropout = 0.2 }"})


def test_bf16_request_without_native_bf16_says_so_and_trains_in_fp32(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: False)
    caplog.set_level(logging.INFO, logger="ddpmkit")
    train(load_config(ROOT / "configs" / "digits.toml", _sets(tmp_path / "bf16", 2, "bf16")), progress=False)
    train(load_config(ROOT / "configs" / "digits.toml", _sets(tmp_path / "fp32", 2, "fp32")), progress=False)
    lines = [r.getMessage() for r in caplog.records if "no native bf16" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("train.precision bf16")
    a, b = load_checkpoint(tmp_path / "bf16"), load_checkpoint(tmp_path / "fp32")
    assert all(torch.equal(a.model[k], b.model[k]) for k in a.model)  # the fallback is plain fp32


@needs_bf16
def test_bf16_training_on_cpu_keeps_fp32_weights_differs_from_fp32_and_resumes_bit_exactly(tmp_path):
    K = 3
    cfg = load_config(ROOT / "configs" / "digits.toml", _sets(tmp_path / "full", 2 * K, "bf16"))
    train(cfg, progress=False)
    half = load_config(ROOT / "configs" / "digits.toml", _sets(tmp_path / "half", 2 * K, "bf16"))
    assert train(half, progress=False, max_steps=K).step == K
    assert train(half, resume=True, progress=False).step == 2 * K
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "half")
    for part in ("model", "ema"):
        for k, v in getattr(a, part).items():
            assert v.dtype == torch.float32 and torch.equal(v, getattr(b, part)[k]), (part, k)
    train(load_config(ROOT / "configs" / "digits.toml", _sets(tmp_path / "fp32", 2 * K, "fp32")), progress=False)
    c = load_checkpoint(tmp_path / "fp32")
    assert any(not torch.equal(a.model[k], c.model[k]) for k in a.model)  # autocast really ran


def test_a_resumed_bf16_run_keeps_the_layout_it_trained_in(tmp_path, monkeypatch):
    """The CPU bf16 layout a run trained in is stored in its checkpoints and kept on --resume, whatever a
    new measurement would say (a near-tie can flip, and the other layout rounds differently)."""
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: True)  # autocast runs either way; only speed differs
    monkeypatch.delenv(P.LAYOUT_ENV, raising=False)
    answer, calls = [True], []

    def measure(model, **_):
        calls.append(model.channels_last)
        return answer[0]
    monkeypatch.setattr(P, "measured_bf16_layout", measure)
    K = 2
    digits = ROOT / "configs" / "digits.toml"
    train(load_config(digits, _sets(tmp_path / "full", 2 * K, "bf16")), progress=False)
    half = load_config(digits, _sets(tmp_path / "half", 2 * K, "bf16"))
    train(half, progress=False, max_steps=K)
    assert len(calls) == 2 and load_checkpoint(tmp_path / "half").extra["channels_last"] is True
    answer[0] = False  # a new measurement would now pick NCHW
    assert train(half, resume=True, progress=False).step == 2 * K
    assert len(calls) == 2  # not measured again
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "half")
    assert b.extra["channels_last"] is True
    assert all(torch.equal(a.model[k], b.model[k]) for k in a.model)
    assert all(torch.equal(a.ema[k], b.ema[k]) for k in a.ema)
    # resumed at another precision, the stored layout is not that precision's choice: measured anew
    fp32_then_bf16 = load_config(digits, _sets(tmp_path / "mixed", 2 * K, "fp32"))
    train(fp32_then_bf16, progress=False, max_steps=K)
    train(load_config(digits, _sets(tmp_path / "mixed", 2 * K, "bf16")), resume=True, progress=False)
    assert len(calls) == 3 and load_checkpoint(tmp_path / "mixed").extra["channels_last"] is False


@needs_bf16
def test_bf16_sampling_is_close_to_fp32_and_float32(tmp_path):
    train(load_config(ROOT / "configs" / "digits.toml", _sets(tmp_path / "run", 2, "fp32")), progress=False)
    run = load_run(tmp_path / "run")
    kw = dict(sampler="ddim", steps=4, seed=0)
    x32 = generate(run.model, run.process, 6, run.item_shape, **kw)
    x16 = generate(run.model, run.process, 6, run.item_shape, precision="bf16", **kw)
    assert x16.dtype == torch.float32 and x16.shape == x32.shape
    assert not torch.equal(x16, x32)
    assert (x16 - x32).abs().max() < 0.1  # bf16 rounding of a 4-step DDIM run, pixels in [-1, 1]


def _net():
    from ddpmkit.networks import UNet, UNetConfig

    return UNet(UNetConfig(in_channels=1, image_size=8, ch=8, ch_mult=(1, 2), num_res_blocks=1,
                           attn_resolutions=(), norm_groups=4))


def test_layout_is_a_choice_under_cpu_bf16_only_and_comes_back(monkeypatch):
    net = _net()
    for device, dtype in (("cpu", None), ("cuda:0", torch.bfloat16), ("cuda", torch.float16)):
        assert P.channels_last_for(device, dtype, net) is None  # its own layout
    assert P.channels_last_for("cpu", torch.bfloat16, torch.nn.Linear(2, 2)) is None  # cannot switch
    assert P.channels_last_for("cpu", torch.bfloat16) is None
    monkeypatch.setenv(P.LAYOUT_ENV, "nchw")
    assert P.channels_last_for("cpu", torch.bfloat16, net) is False
    assert net.channels_last
    with P.layout_for(net, "cpu", torch.bfloat16):
        assert not net.channels_last and net.conv_in.weight.is_contiguous()
    assert net.channels_last and net.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match="inside"), P.layout_for(net, "cpu", torch.bfloat16):
        raise RuntimeError("inside")
    assert net.channels_last  # restored after an error too
    assert P.use_layout_for(net, "cpu", None) is None and net.channels_last  # fp32: its own layout
    assert P.use_layout_for(net, "cpu", torch.bfloat16) is True and not net.channels_last
    assert P.use_layout_for(net, "cpu", torch.bfloat16) is None  # already there
    monkeypatch.setenv(P.LAYOUT_ENV, "channels_last")
    assert P.use_layout_for(net, "cpu", torch.bfloat16) is False and net.channels_last
    lin = torch.nn.Linear(2, 2)  # a network without set_channels_last is left alone
    assert P.use_layout_for(lin, "cpu", torch.bfloat16) is None
    monkeypatch.setenv(P.LAYOUT_ENV, "fastest")
    with pytest.raises(UserError, match="DDPMKIT_BF16_LAYOUT must be one of auto, nchw, channels_last"):
        P.channels_last_for("cpu", torch.bfloat16, net)


@pytest.mark.parametrize("slow_layout", [True, False])
def test_the_bf16_layout_is_the_faster_one_measured_once_and_cached(monkeypatch, tmp_path, slow_layout):
    """With a step that takes 2 s in one layout and 1 s in the other, the other is chosen; the answer is
    cached per network config, and the measurement leaves the model, its gradients and the RNG alone."""
    monkeypatch.setenv("DDPMKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(P.LAYOUT_ENV, raising=False)
    calls = []

    clock = [0.0]

    def fake(model, x, t):  # a pass advances precision's clock by 2 s in the slow layout, 1 s in the other
        calls.append(model.channels_last)
        assert not model.training and x.shape == (P.LAYOUT_BATCH, 1, 8, 8)
        clock[0] += 2.0 if model.channels_last == slow_layout else 1.0

    monkeypatch.setattr(P, "_forward_backward", fake)
    monkeypatch.setattr(P, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    net = _net().train()
    rng = torch.get_rng_state()
    assert P.channels_last_for("cpu", torch.bfloat16, net) is (not slow_layout)
    assert len(calls) == 2 + 2 * P.LAYOUT_PAIRS and calls.count(True) == calls.count(False)
    assert net.channels_last and net.training and torch.equal(torch.get_rng_state(), rng)
    entry = json.loads((tmp_path / "cpu_fast.json").read_text())[cpu_fast.profile_key()]
    rec = entry[P.LAYOUT_SECTION][P.network_key(net)]
    assert rec["channels_last"] is (not slow_layout) and rec["nchw_over_channels_last"] == (0.5 if slow_layout else 2.0)
    calls.clear()
    assert P.channels_last_for("cpu", torch.bfloat16, _net()) is (not slow_layout) and calls == []  # cached
    nchw = _net()
    nchw.config = dataclasses.replace(nchw.config, channels_last=False)  # the starting layout is not the key
    assert P.network_key(nchw) == P.network_key(net)
    other = _net()
    other.config = dataclasses.replace(other.config, ch=16)  # another network: measured afresh
    P.channels_last_for("cpu", torch.bfloat16, other)
    assert len(calls) == 2 + 2 * P.LAYOUT_PAIRS
    cpu_fast.save_profile(["dropout_bits"], {})  # a CPU-path profile written later keeps the layouts
    entry = json.loads((tmp_path / "cpu_fast.json").read_text())[cpu_fast.profile_key()]
    assert entry["paths"] == ["dropout_bits"] and len(entry[P.LAYOUT_SECTION]) == 2


def test_the_real_layout_measurement_runs_and_touches_no_gradient(monkeypatch, tmp_path):
    monkeypatch.setenv("DDPMKIT_CACHE_DIR", str(tmp_path))
    net = _net()
    before = [p.detach().clone() for p in net.parameters()]
    with torch.inference_mode():  # as a sampler may call it
        choice = P.measured_bf16_layout(net, batch=2, pairs=1)
    assert isinstance(choice, bool) and net.channels_last
    assert all(p.grad is None for p in net.parameters())
    assert all(torch.equal(a, p) for a, p in zip(before, net.parameters(), strict=True))
    assert cpu_fast.cached(P.LAYOUT_SECTION, P.network_key(net))["channels_last"] is choice


@needs_bf16
def test_bf16_training_and_sampling_run_the_unet_in_the_chosen_layout_and_sampling_restores_its_own(
        tmp_path, monkeypatch):
    from ddpmkit.training.trainer import Trainer

    monkeypatch.setenv(P.LAYOUT_ENV, "nchw")

    cfg = load_config(ROOT / "configs" / "digits.toml", _sets(tmp_path / "run", 2, "bf16"))
    trainer = Trainer(cfg, progress=False)
    assert trainer.model.channels_last is False and trainer.ema.module.channels_last is False
    assert all(p.is_contiguous() for p in trainer.model.parameters())
    trainer.train()
    run = load_run(tmp_path / "run")
    assert run.model.channels_last  # a loaded model starts in its config's layout
    generate(run.model, run.process, 2, run.item_shape, sampler="ddim", steps=2, precision="bf16")
    assert run.model.channels_last
