"""The one door to the CPU speed paths: the switch, its precedence, the profile, and the one gate
(eager CPU only) for every path, with decisions that never depend on the batch size."""

import pytest
import torch

from ddpmkit.errors import UserError
from ddpmkit.networks import cpu_fast
from ddpmkit.networks.layers import Dropout, GroupNorm, MatmulGradConv2d, Upsample


@pytest.fixture(autouse=True)
def _auto(monkeypatch, tmp_path):
    """No environment choice and an empty cache dir: `auto` means the defaults unless a test says more."""
    monkeypatch.delenv(cpu_fast.ENV, raising=False)
    monkeypatch.setenv("DDPMKIT_CACHE_DIR", str(tmp_path))
    for f in (cpu_fast._from_env, cpu_fast._profiled):
        f.cache_clear()
    with cpu_fast.paths(None):
        yield
    for f in (cpu_fast._from_env, cpu_fast._profiled):
        f.cache_clear()


def test_specs():
    assert cpu_fast.parse_spec("auto") is None and cpu_fast.parse_spec("") is None
    assert cpu_fast.parse_spec("all") == frozenset(cpu_fast.PATHS)
    assert cpu_fast.parse_spec("none") == frozenset() == cpu_fast.parse_spec("0")
    assert cpu_fast.parse_spec(" groupnorm_sums, dropout_bits ") == {"groupnorm_sums", "dropout_bits"}
    with pytest.raises(UserError, match="unknown CPU path convv.*known: conv_weight_grad"):
        cpu_fast.parse_spec("convv")
    with pytest.raises(UserError):
        cpu_fast.set_paths({"nope"})
    with pytest.raises(KeyError):
        cpu_fast.enabled("nope")
    assert cpu_fast.DEFAULT_PATHS <= set(cpu_fast.PATHS)


def test_the_profile_rule_gain_loss_and_noise():
    """keep_paths: some step >= MIN_GAIN faster and none > MAX_LOSS slower; both bounds rise to the
    run's A/A noise when that is larger; a path with no measured step is not kept."""
    g, l = cpu_fast.MIN_GAIN, cpu_fast.MAX_LOSS
    ratios = {
        "conv_weight_grad": {"a": 1 + g, "b": 1 - l},            # on both edges: kept
        "groupnorm_sums": {"a": 1 + g - 1e-9, "b": 1.0},          # gain just short: dropped
        "dropout_bits": {"a": 1.10, "b": 1 - l - 1e-9},           # loses a bit too much: dropped
        "upsample_transposed": {},                                # never ran: dropped
    }
    assert cpu_fast.keep_paths(ratios) == ["conv_weight_grad"]
    # noise above both bounds: dropout's loss is now within it, and conv's 3 % gain is not beyond it
    assert cpu_fast.keep_paths(ratios, noise=g + 0.005) == ["dropout_bits"]
    assert cpu_fast.keep_paths({"dropout_bits": {"a": 1.04}}, noise=0.05) == []
    assert cpu_fast.keep_paths({"dropout_bits": {"a": 1.06, "b": 0.96}}, noise=0.05) == ["dropout_bits"]


def test_precedence_override_then_env_then_profile_then_defaults(monkeypatch):
    assert cpu_fast.active() == cpu_fast.DEFAULT_PATHS and cpu_fast.source() == "defaults"
    path = cpu_fast.save_profile(["groupnorm_sums"], {"note": "test"})
    assert path.parent == cpu_fast.profile_path().parent and path.is_file()
    assert cpu_fast.active() == {"groupnorm_sums"} and cpu_fast.source().startswith("profile")
    monkeypatch.setenv(cpu_fast.ENV, "dropout_bits")
    cpu_fast._from_env.cache_clear()
    assert cpu_fast.active() == {"dropout_bits"} and cpu_fast.source() == cpu_fast.ENV
    with cpu_fast.paths("none"):
        assert cpu_fast.active() == frozenset() and not cpu_fast.enabled("dropout_bits")
        with cpu_fast.paths({"conv_weight_grad"}):
            assert cpu_fast.active() == {"conv_weight_grad"}
        assert cpu_fast.active() == frozenset()
    assert cpu_fast.active() == {"dropout_bits"}  # restored


def test_a_profile_for_another_cpu_or_torch_is_ignored(monkeypatch):
    cpu_fast.save_profile(["dropout_bits"], {})
    monkeypatch.setattr(cpu_fast, "profile_key", lambda: "OtherVendor-1-2 torch-0.0")
    cpu_fast._profiled.cache_clear()
    assert cpu_fast.active() == cpu_fast.DEFAULT_PATHS
    cpu_fast.profile_path().write_text("not json")
    cpu_fast._profiled.cache_clear()
    assert cpu_fast.active() == cpu_fast.DEFAULT_PATHS  # a broken cache file is no choice, not an error


def _cases():
    """(path, layer, input that takes the path when it is on)."""
    cl = torch.channels_last
    conv = MatmulGradConv2d(128, 128, 3, padding=1)
    norm = GroupNorm(8, 32)
    return [
        ("conv_weight_grad", conv, torch.randn(2, 128, 4, 4)),
        ("groupnorm_sums", norm, torch.randn(2, 32, 28, 28).to(memory_format=cl)),
        ("dropout_bits", Dropout(0.1), torch.randn(2, 8, 6, 6)),
        ("upsample_transposed", Upsample(4), torch.randn(2, 4, 8, 8)),
    ]


@pytest.mark.parametrize("case", range(4))
def test_the_one_gate_for_every_path(case, monkeypatch):
    name, layer, x = _cases()[case]
    with cpu_fast.paths("all"):
        assert layer._fast_path(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast: the plain op
            assert not layer._fast_path(x)
        assert not layer._fast_path(x.to("meta"))  # any other device (CUDA included): the plain op
        with monkeypatch.context() as m:
            m.setattr(torch.compiler, "is_compiling", lambda: True)
            assert not layer._fast_path(x)
    with cpu_fast.paths(set(cpu_fast.PATHS) - {name}):  # its own switch, and only its own
        assert not layer._fast_path(x)
    with cpu_fast.paths({name}):
        assert layer._fast_path(x)


def test_dtype_and_layout_rules():
    with cpu_fast.paths("all"):
        conv = MatmulGradConv2d(128, 128, 3, padding=1)
        assert not conv._fast_path(torch.randn(2, 128, 4, 4, dtype=torch.bfloat16))
        assert not conv.double()._fast_path(torch.randn(2, 128, 4, 4, dtype=torch.float64))
        norm = GroupNorm(8, 32)
        x = torch.randn(2, 32, 28, 28)
        assert not norm._fast_path(x)  # NCHW: torch's kernel is fast there
        assert norm._fast_path(x.to(memory_format=torch.channels_last))
        assert not norm.bfloat16()._fast_path(x.to(torch.bfloat16, memory_format=torch.channels_last))


@pytest.mark.parametrize("case", range(4))
def test_decisions_do_not_depend_on_the_batch_size(case):
    name, layer, x = _cases()[case]
    shapes = [(8, 8), (4, 4), (28, 28), (7, 7), (14, 14), (3, 5), (16, 16)]
    with cpu_fast.paths("all"):
        for h, w in shapes:
            per_batch = set()
            for b in (1, 2, 7, 64):
                xb = torch.randn(b, x.shape[1], h, w).to(memory_format=torch.channels_last)
                per_batch.add(layer._fast_path(xb))
            assert len(per_batch) == 1, (name, h, w)


def test_cpu_profile_measures_every_path_where_it_runs_and_auto_then_reads_its_choice(tmp_path):
    """The library profiler (what `ddpmkit cpu-profile` runs) on the tiny digits preset, one run a
    variant: ratios for every path on the steps where it runs (training-only paths on training steps
    only), an A/A control per step, the rule's choice saved under this machine's key and read by auto."""
    from ddpmkit.networks.cpu_profile import profile_cpu_paths

    lines = []
    found = profile_cpu_paths([("digits", 2)], repeats=1, threads=1, log=lines.append)
    steps = {"digits train b2", "digits infer b2"}
    assert set(found["aa_control"]) == steps
    assert found["noise"] == max(abs(1 - r) for r in found["aa_control"].values())
    for p in cpu_fast.PATHS:
        want = {"digits train b2"} if p in cpu_fast.TRAINING_ONLY else steps
        assert set(found["ratios"][p]) == want and all(r > 0 for r in found["ratios"][p].values())
    assert found["kept"] == cpu_fast.keep_paths(found["ratios"], found["noise"])
    assert found["path"] == str(cpu_fast.profile_path()) and found["threads"] == 1
    assert cpu_fast.active() == frozenset(found["kept"]) and cpu_fast.source().startswith("profile")
    assert len(lines) == 1 + (1 + len(cpu_fast.PATHS)) + (1 + 2)  # header; per step the A/A and each judged path


def test_cpu_profile_command_dry_run_writes_nothing_and_bad_cases_are_one_line_errors(tmp_path, capsys):
    from ddpmkit.cli import main

    assert main(["cpu-profile", "--case", "digits:2", "--repeats", "1", "--threads", "1", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "kept:" in out and "nothing written" in out and not cpu_fast.profile_path().exists()
    assert main(["cpu-profile", "--case", "nope:2", "--dry-run"]) == 2
    assert "unknown U-Net preset 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["cpu-profile", "--case", "digits"])
    assert e.value.code == 2 and "PRESET:BATCH" in capsys.readouterr().err


@pytest.mark.parametrize("spec", ["all", "auto"])
def test_torch_compile_traces_the_unet_in_one_graph(spec):
    """Inside torch.compile the gate answers before the profile lookup (a file read), so dynamo traces
    a U-Net with every CPU path switched on -- or read from a profile -- without a single graph break."""
    from ddpmkit.networks import UNet, UNetConfig

    net = UNet(UNetConfig(image_size=8, in_channels=1, ch=8, ch_mult=(1, 2), num_res_blocks=1,
                          attn_resolutions=(4,), dropout=0.1, norm_groups=4, channels_last=True)).train()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 7])
    torch._dynamo.reset()
    with cpu_fast.paths(None if spec == "auto" else spec):
        explained = torch._dynamo.explain(net)(x, t)
    torch._dynamo.reset()
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
