"""Nothing lost: damaged checkpoints are refused, leftovers of killed saves are collected, non-finite weights
never reach a checkpoint, --resume compares the whole config, export --force replaces only an export."""

import json
import os
import shutil

import pytest
import torch

from ddpmkit.checkpoint import (
    Checkpoint,
    clean_checkpoints,
    export_checkpoint,
    is_export,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from ddpmkit.config import load_config
from ddpmkit.errors import TrainingDiverged, UserError
from ddpmkit.testing.tiny import toy_overrides
from ddpmkit.training.trainer import Trainer, train, train_config


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("toy") / "run"
    train(load_config(None, toy_overrides(run, 2)), progress=False)
    return run


def _copy(run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out, list_checkpoints(out / "checkpoints")[-1]


def _ckpt(step, opt=True):
    net = torch.nn.Linear(2, 2)
    o = torch.optim.AdamW(net.parameters())
    net(torch.ones(1, 2)).sum().backward()
    o.step()
    return Checkpoint(step=step, config={}, network={}, model=net.state_dict(), ema=net.state_dict(),
                      optimizer=o.state_dict() if opt else None)


def test_files_that_do_not_match_state_json_are_refused(toy_run, tmp_path):
    run, ck = _copy(toy_run, tmp_path)
    (ck / "optim.safetensors").unlink()  # what a kill during the old re-save left: optimizer state gone
    with pytest.raises(UserError, match="incomplete: state.json records optim.safetensors, which is missing"):
        load_checkpoint(run)
    shutil.copy(toy_run / "checkpoints" / ck.name / "optim.safetensors", ck)
    data = (ck / "model.safetensors").read_bytes()
    (ck / "model.safetensors").write_bytes(data[:-10])
    with pytest.raises(UserError, match="damaged: model.safetensors has"):
        load_checkpoint(run)
    (ck / "model.safetensors").write_bytes(os.urandom(len(data)))  # right size, random bytes
    with pytest.raises(UserError, match="not a safetensors file"):
        load_checkpoint(run)
    state = json.loads((ck / "state.json").read_text())
    del state["network"], state["step"]
    (ck / "state.json").write_text(json.dumps(state))
    with pytest.raises(UserError, match="lacks step, network"):
        load_checkpoint(run)


def test_clean_checkpoints_removes_only_leftovers(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (1, 2):
        save_checkpoint(tmp_path, _ckpt(step), keep=0)
    (root / ".tmp-step_00000003-abc").mkdir()
    (root / ".latest-123").write_text("step_00000003")
    half = root / "step_00000000"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"x")  # a prune cut short: no state.json
    shutil.copytree(root / "step_00000002", root / "step_00000002.1")  # a re-save killed before `latest` moved
    gone = {p.name for p in clean_checkpoints(root)}
    assert gone == {".tmp-step_00000003-abc", ".latest-123", "step_00000000", "step_00000002.1"}
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000001", "step_00000002"]
    # re-saving a step keeps one copy and the newest generation is what `latest` names
    path = save_checkpoint(tmp_path, _ckpt(2), keep=0)
    assert path.name == "step_00000002.1" and (root / "latest").read_text() == "step_00000002.1"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000001", "step_00000002.1"]


def test_non_finite_weights_never_reach_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    sets = toy_overrides(run, 6, **{"train.lr": "1e39", "train.warmup": 0, "train.checkpoint_every": 1,
                                    "train.grad_clip": 0})
    with pytest.raises(TrainingDiverged, match="became NaN or infinite by step 1; not saved"):
        train(load_config(None, sets), progress=False)
    assert list_checkpoints(run / "checkpoints") == []  # step 1's weights are the first non-finite ones
    bad = _ckpt(3)
    bad.ema = {k: torch.full_like(v, float("nan")) for k, v in bad.ema.items()}
    with pytest.raises(TrainingDiverged, match="became NaN or infinite by step 3; not saved"):
        save_checkpoint(tmp_path / "other", bad)
    assert not list_checkpoints(tmp_path / "other" / "checkpoints")


def test_resume_allows_train_changes_and_refuses_process_changes(toy_run, tmp_path):
    run, _ = _copy(toy_run, tmp_path)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    changes = (("diffusion.schedule", "cosine"), ("data.n", 256), ("model.options", "{ hidden = 64, num_layers = 2 }"))
    for key, value in changes:
        with pytest.raises(UserError, match=rf"would change what this run trains \({key}: "):
            Trainer(load_config(None, toy_overrides(run, 4, **{key: value})), resume=True, progress=False)
    assert before == {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    lines = []
    t = Trainer(load_config(None, toy_overrides(run, 4, **{"train.lr": 5e-4})), resume=True, progress=False,
                log=lines.append)
    assert t.step == 2
    changed = [m for m in lines if m.startswith("resuming with changed settings")]
    assert changed == ["resuming with changed settings: train.lr 0.001 -> 0.0005, train.steps 2 -> 4"]
    # no config: the run's stored one, with overrides on top
    cfg = train_config(None, ["train.steps=5"], resume=str(run))
    assert cfg.train.steps == 5 and cfg.data.n == 512 and cfg.run.out_dir == str(run)
    with pytest.raises(UserError, match="needs --config"):
        train_config(None, [], resume=True)


def test_export_force_replaces_only_an_earlier_export(toy_run, tmp_path, monkeypatch):
    run, ck = _copy(toy_run, tmp_path)
    out = export_checkpoint(run, tmp_path / "slim")
    assert is_export(out) and not is_export(run) and not is_export(ck)
    first = (out / "state.json").read_bytes()
    export_checkpoint(run, out, force=True, use_ema=False)  # an earlier export: replaced
    assert is_export(out) and (out / "model.safetensors").is_file() and (out / "state.json").read_bytes() != first
    other = tmp_path / "notes"
    other.mkdir()
    (other / "a.txt").write_text("keep me")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    snapshot = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for target, why in ((other, "not one"), (".", "current directory"), (run, "overlap"), (tmp_path, "current"),
                        (run / "checkpoints", "overlap"), (ck, "overlap"), (run / "checkpoints" / "x", "overlap")):
        with pytest.raises(UserError, match=why):
            export_checkpoint(run, target, force=True)
    assert snapshot == {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
