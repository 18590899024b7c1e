"""The benchmark scripts' dry runs (--tiny): the whole pipeline in seconds, on the tiny U-Net."""

import importlib
import json
import math
from pathlib import Path

import pytest

from ddpmkit.checkpoint import load_checkpoint

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def quality_per_hour(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("quality_per_hour")


def test_benchmark_jsons_name_the_cpu_as_the_cpu_path_profiles_key_it(monkeypatch):
    from ddpmkit.networks import cpu_fast

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    machine = importlib.import_module("_machine")
    assert machine.cpu_identity is cpu_fast.cpu_identity  # one reader of /proc/cpuinfo
    fake = {"vendor": "GenuineIntel", "family": "6", "model": "167", "name": "Some Xeon",
            "flags": frozenset({"avx2", "amx_bf16", "sse2"})}
    monkeypatch.setattr(machine, "cpu_identity", lambda: fake)
    info = machine.cpu_info()
    assert (info["model"], info["family"], info["model_number"]) == ("Some Xeon", "6", "167")
    assert info["flags"] == ["avx2", "amx_bf16"]  # FLAGS order, others left out
    assert machine.cpu_model() == "Some Xeon (family 6, model 167; avx2 amx_bf16)"


def test_budget_marks(quality_per_hour):
    assert quality_per_hour.marks(60, 15) == [15, 30, 45, 60]
    assert quality_per_hour.marks(50, 15) == [15, 30, 45, 50]
    assert quality_per_hour.marks(10, 15) == [10]
    assert quality_per_hour.parse_samplers("dpm++:10,ddim:50") == [("dpm++", 10), ("ddim", 50)]
    with pytest.raises(SystemExit, match="NAME:STEPS"):
        quality_per_hour.parse_samplers("dpm++")


def test_quality_per_hour_tiny_trains_to_each_mark_and_scores_every_checkpoint(quality_per_hour, tmp_path):
    argv = ["--tiny", "--runs", str(tmp_path / "runs"), "--json", str(tmp_path / "qph.json"),
            "--cache-dir", str(tmp_path / "cache"), "--threads", "1", "--set", "train.lr_schedule=cosine",
            "--set", "train.steps=100000", "--set", "train.ema=power"]
    payload = quality_per_hour.main(argv)
    assert json.loads((tmp_path / "qph.json").read_text()) == payload
    rows = payload["checkpoints"]
    assert [r["minutes"] for r in rows] == [0.02, 0.04]
    assert payload["resolved_config"]["train"]["lr_schedule"] == "cosine"
    assert payload["overrides"][-1] == "train.ema=power" and payload["cpu"]["cores"] >= 1
    assert 0 < rows[0]["step"] < rows[1]["step"]
    for r in rows:
        assert r["train_seconds"] >= r["minutes"] * 60          # stopped at the mark, not before
        assert r["images_seen"] == 8 * r["step"]                # tiny batch 8
        assert load_checkpoint(r["checkpoint"]).step == r["step"]
        assert set(r["scores"]) == {"dpm++-3", "ddim-4"}
        for s in r["scores"].values():
            assert math.isfinite(s["fid"]) and s["fid"] > 0 and s["n"] == 24
            assert 0 <= s["precision"] <= 1 and 0 <= s["recall"] <= 1 and 0 <= s["confident_fraction"] <= 1
    # a rerun reuses what is there: no training, the same scores
    again = quality_per_hour.main(argv)
    assert again["checkpoints"] == rows
    with pytest.raises(SystemExit, match="trained with another config"):
        quality_per_hour.main([*argv, "--set", "train.lr=5e-4"])
    # --score: an existing checkpoint scored the same way gives the same numbers as its mark did
    scored = quality_per_hour.main(["--tiny", "--score", rows[-1]["checkpoint"], "--name", "scored", "--runs",
                                    str(tmp_path / "runs"), "--json", str(tmp_path / "scored.json"),
                                    "--cache-dir", str(tmp_path / "cache"), "--threads", "1"])
    (only,) = scored["checkpoints"]
    assert only["step"] == rows[-1]["step"] and only["minutes"] is None
    for key, s in rows[-1]["scores"].items():
        assert only["scores"][key]["fid"] == s["fid"] and only["scores"][key]["precision"] == s["precision"]
    with pytest.raises(SystemExit, match="--score"):
        quality_per_hour.main(["--tiny", "--score", str(tmp_path / "nothing"), "--runs", str(tmp_path / "runs")])


def test_quality_per_hour_every_steps_trains_to_step_marks_and_records_their_minutes(quality_per_hour, tmp_path):
    argv = ["--tiny", "--runs", str(tmp_path / "runs"), "--threads", "1", "--only", "train", "--set",
            "train.steps=7", "--every-steps", "3"]
    quality_per_hour.main(argv)
    run_dir = tmp_path / "runs" / "baseline"
    rows = json.loads((run_dir / "qph_train.json").read_text())
    assert [r["step"] for r in rows] == [r["step_mark"] for r in rows] == [3, 6, 7]
    assert [load_checkpoint(r["checkpoint"]).step for r in rows] == [3, 6, 7]
    assert [r["finished"] for r in rows] == [False, False, True]
    assert 0 < rows[0]["train_seconds"] < rows[1]["train_seconds"] < rows[2]["train_seconds"]
    assert all(r["minutes"] == round(r["train_seconds"] / 60, 2) for r in rows)
    assert not (run_dir / "samples.png").exists()   # no picture inside the timed stretches
    with pytest.raises(SystemExit, match="drop --minutes"):
        quality_per_hour.main([*argv, "--minutes", "5"])
    with pytest.raises(SystemExit, match="marks of steps"):   # a step run is not continued as a timed one
        quality_per_hour.main(argv[:-2])


def test_quality_per_hour_a_signal_stops_the_benchmark_and_the_same_command_continues(quality_per_hour, tmp_path,
                                                                                   monkeypatch):
    """Ctrl-C / SIGTERM (the trainer's clean stop) is not taken for a budget mark: the benchmark exits,
    keeps the checkpoint and the seconds trained, and the rerun finishes the budget from there."""
    from ddpmkit.training.trainer import Trainer

    argv = ["--tiny", "--runs", str(tmp_path / "runs"), "--threads", "1", "--only", "train"]
    real_train = Trainer.train

    def interrupted(self, *a, **k):  # as if a signal arrived during the first step
        self.request_stop()
        return real_train(self, *a, **k)

    monkeypatch.setattr(Trainer, "train", interrupted)
    with pytest.raises(SystemExit, match="the same command continues"):
        quality_per_hour.main(argv)
    run_dir = tmp_path / "runs" / "baseline"
    partial = json.loads((run_dir / "qph_partial.json").read_text())
    assert not (run_dir / "qph_train.json").exists() and partial["step"] == load_checkpoint(run_dir).step >= 1
    monkeypatch.setattr(Trainer, "train", real_train)
    quality_per_hour.main(argv)
    rows = json.loads((run_dir / "qph_train.json").read_text())
    assert [r["minutes"] for r in rows] == [0.02, 0.04] and not (run_dir / "qph_partial.json").exists()
    assert rows[0]["step"] > partial["step"] and rows[0]["train_seconds"] > partial["train_seconds"]
    assert rows[-1]["train_seconds"] >= 0.04 * 60


def test_recipe_step_times_every_layout_and_precision_of_the_configs_network(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from ddpmkit.networks.precision import cpu_has_native_bf16

    recipe_step = importlib.import_module("recipe_step")
    out = recipe_step.main(["--config", str(BENCHMARKS.parent / "configs" / "digits.toml"), "--batch", "4",
                            "--rounds", "1", "--steps", "1", "--threads", "1", "--json", str(tmp_path / "r.json")])
    assert json.loads((tmp_path / "r.json").read_text()) == out
    precisions = ("fp32", "bf16") if cpu_has_native_bf16() else ("fp32",)
    assert [(r["layout"], r["precision"]) for r in out["rows"]] == [
        (lay, p) for p in precisions for lay in ("channels_last", "nchw")]
    assert all(r["batch"] == 4 and r["img_per_s"] == 4 / r["seconds"] for r in out["rows"])
    with pytest.raises(SystemExit, match="a U-Net config"):
        recipe_step.main(["--config", str(BENCHMARKS.parent / "configs" / "toy2d.toml"), "--json", str(tmp_path / "x")])


def test_bf16_layout_times_both_layouts_of_each_network_and_writes_the_cpu(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    bf16_layout = importlib.import_module("bf16_layout")
    out = bf16_layout.main(["--networks", "recipe", "--pairs", "1", "--json", str(tmp_path / "l.json")])
    assert json.loads((tmp_path / "l.json").read_text()) == json.loads(json.dumps(out))
    assert [(r["network"], r["mode"], r["batch"]) for r in out["rows"]] == [("recipe", "train", 64),
                                                                          ("recipe", "infer", 64)]
    for r in out["rows"]:
        assert r["nchw_img_s"] > 0 and r["channels_last_img_s"] > 0 and r["nchw_over_channels_last"] > 0
    assert out["cpu"]["model"] and out["pairs"] == 1
    with pytest.raises(SystemExit):
        bf16_layout.main(["--pairs", "0", "--json", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()
