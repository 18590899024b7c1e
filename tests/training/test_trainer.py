import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ddpmkit.checkpoint import load_checkpoint
from ddpmkit.config import load_config
from ddpmkit.errors import TrainingDiverged, UserError
from ddpmkit.networks.precision import cpu_has_native_bf16
from ddpmkit.testing.image_folder import make_mixed_folder
from ddpmkit.testing.tiny import TINY_UNET, tiny_overrides
from ddpmkit.testing.tiny import toy_overrides as toy_sets
from ddpmkit.training import distributed as D
from ddpmkit.training.trainer import Trainer, train

ROOT = Path(__file__).resolve().parents[2]


def metrics(run):
    rows = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("img_per_s", "data_wait_s")} for r in rows]


def assert_same_state(a, b):
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    assert ca.step == cb.step
    for part in ("model", "ema"):
        da, db = getattr(ca, part), getattr(cb, part)
        assert da.keys() == db.keys()
        for k in da:
            assert torch.equal(da[k], db[k]), f"{part}.{k} differs"
    for k, v in ca.optimizer["state"].items():
        for name, tensor in v.items():
            assert torch.equal(torch.as_tensor(tensor), torch.as_tensor(cb.optimizer["state"][k][name]))


def folder_sets(tmp_path, storage="prepared"):
    """--set overrides that train on the mixed synthetic image folder (8x8 RGB, two classes)."""
    root = tmp_path / "images"
    if not root.is_dir():
        make_mixed_folder(root, target=8)
    return ["data.name=image-folder", f'data.data_dir="{root}"', "data.image_size=8", f"data.storage={storage}",
            f'data.prepared_dir="{tmp_path / "prepared"}"', "data.workers=1"]


@pytest.mark.parametrize("kind", ["mlp", "unet", "unet-prepared-folder"])
def test_resume_is_bit_identical(tmp_path, kind):
    """2K steps in one go == K steps, stop, resume, K steps: weights, EMA, optimizer and logged losses."""
    K = 3
    if kind == "mlp":
        def sets(out, steps):
            return toy_sets(out, steps, **{"diffusion.loss": "vlb", "diffusion.variance": "learned_range",
                                           "diffusion.loss_weighting": "none"})  # the demo's Min-SNR is MSE-only
    else:  # dropout, flips, label dropout and a learned variance all draw random numbers
        data = folder_sets(tmp_path) if kind == "unet-prepared-folder" else []

        def sets(out, steps):
            return tiny_overrides(out, steps, **{"data.flip": "true", "data.class_conditional": "true",
                                                 "diffusion.variance": "learned_range", "diffusion.loss": "hybrid",
                                                 "model.options": TINY_UNET[:-1] + ", dropout = 0.2 }"}) + data
    cfg_full = load_config(ROOT / "configs" / "digits.toml", sets(tmp_path / "full", 2 * K))
    train(cfg_full, progress=False)
    cfg_half = load_config(ROOT / "configs" / "digits.toml", sets(tmp_path / "half", 2 * K))
    first = train(cfg_half, progress=False, max_steps=K)
    assert first.step == K
    second = train(cfg_half, resume=True, progress=False)
    assert second.step == 2 * K
    assert_same_state(tmp_path / "full", tmp_path / "half")
    assert metrics(tmp_path / "full") == metrics(tmp_path / "half")


# every option of the quality-per-hour recipes on at once (docs/training.md)
RECIPES = {
    "min_snr-v-cosine": {"diffusion.prediction": "v", "diffusion.loss_weighting": "min_snr",
                         "diffusion.min_snr_gamma": "3.0", "diffusion.timestep_sampler": "lognormal",
                         "diffusion.lognormal_mean": "-0.8", "train.lr_schedule": "cosine", "train.lr_min": "1e-5",
                         "train.warmup": "2", "train.ema": "power", "train.ema_std": "0.15"},
    "p2-x0-linear": {"diffusion.prediction": "x0", "diffusion.loss_weighting": "p2", "diffusion.p2_gamma": "0.5",
                     "diffusion.p2_k": "2.0", "diffusion.timestep_sampler": "lognormal",
                     "diffusion.lognormal_std": "1.5",
                     "train.lr_schedule": "linear", "train.lr_min": "2e-5", "train.warmup": "1", "train.ema": "power"},
}


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_resume_is_bit_identical_with_every_recipe_option(tmp_path, recipe):
    """As above with the loss weighting, the log-normal t sampler, a decaying learning rate and the power
    EMA all switched on; the logged learning rates follow the schedule."""
    from ddpmkit.training.lr import lr_at

    K = 3

    def sets(out):
        return tiny_overrides(out, 2 * K, **{"data.flip": "true", **RECIPES[recipe]})

    cfg = load_config(ROOT / "configs" / "digits.toml", sets(tmp_path / "full"))
    train(cfg, progress=False)
    half = load_config(ROOT / "configs" / "digits.toml", sets(tmp_path / "half"))
    assert train(half, progress=False, max_steps=K).step == K
    assert train(half, resume=True, progress=False).step == 2 * K
    assert_same_state(tmp_path / "full", tmp_path / "half")
    rows = metrics(tmp_path / "full")
    assert rows == metrics(tmp_path / "half")
    t = cfg.train
    assert [r["lr"] for r in rows] == [lr_at(r["step"] - 1, lr=t.lr, warmup=t.warmup, steps=t.steps,
                                             schedule=t.lr_schedule, lr_min=t.lr_min) for r in rows]
    assert rows[-1]["lr"] == pytest.approx(t.lr_min)
    # the options are in effect: the stock recipe trains to other weights from the same seed
    plain = {k: v for k, v in RECIPES[recipe].items() if k == "diffusion.prediction"}
    train(load_config(ROOT / "configs" / "digits.toml", tiny_overrides(tmp_path / "plain", 2 * K,
                                                                        **{"data.flip": "true", **plain})),
          progress=False)
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "plain")
    assert not all(torch.equal(a.model[k], b.model[k]) for k in a.model)
    assert not all(torch.equal(a.ema[k], b.ema[k]) for k in a.ema)


def test_resume_refuses_a_new_loss_weighting_and_accepts_a_new_lr_schedule(tmp_path):
    run = tmp_path / "run"
    train(load_config(None, toy_sets(run, 2)), progress=False)
    with pytest.raises(UserError, match="would change what this run trains \\(diffusion.loss_weighting: 'none'"):
        Trainer(load_config(None, toy_sets(run, 4, **{"diffusion.loss_weighting": "min_snr"})),
                resume=True, progress=False)
    with pytest.raises(UserError, match="diffusion.timestep_sampler: 'auto' in the checkpoint, 'lognormal'"):
        Trainer(load_config(None, toy_sets(run, 4, **{"diffusion.timestep_sampler": "lognormal"})),
                resume=True, progress=False)
    notes = []
    trainer = Trainer(load_config(None, toy_sets(run, 4, **{"train.lr_schedule": "cosine", "train.ema": "power"})),
                      resume=True, progress=False, log=notes.append)
    assert trainer.step == 2 and trainer.ema.num_updates == 2
    assert any("train.lr_schedule 'constant' -> 'cosine'" in n and "train.ema 'exponential' -> 'power'" in n
               for n in notes)


def test_a_constant_run_resumed_into_a_late_decay_equals_the_decay_run_from_the_start(tmp_path):
    """train.lr_decay_start: a run trained at a constant rate for K steps and resumed with a linear decay
    starting at step K ends bit for bit where a run with that warm-up-stable-decay schedule from the start
    ends (the constant part is the same rate), and its logged rates are the schedule's."""
    from ddpmkit.training.lr import lr_at

    K = 3
    decay = {"train.lr_schedule": "linear", "train.lr_decay_start": str(K), "train.warmup": "1"}
    full = load_config(ROOT / "configs" / "digits.toml", tiny_overrides(tmp_path / "full", 2 * K, **decay))
    train(full, progress=False)
    first = load_config(ROOT / "configs" / "digits.toml", tiny_overrides(tmp_path / "half", K, **{
        "train.warmup": "1", "train.lr_schedule": "constant"}))
    assert train(first, progress=False).step == K
    notes = []
    then = load_config(ROOT / "configs" / "digits.toml", tiny_overrides(tmp_path / "half", 2 * K, **decay))
    trainer = Trainer(then, resume=True, progress=False, log=notes.append)
    assert any("train.lr_schedule 'constant' -> 'linear'" in n and "train.lr_decay_start 0 -> 3" in n
               for n in notes)
    trainer.train()
    assert_same_state(tmp_path / "full", tmp_path / "half")
    rows, half = metrics(tmp_path / "full"), metrics(tmp_path / "half")
    assert [r["step"] for r in half] == [2, 3, 4, 6]        # the first run's end (step 3) logs a row too
    assert rows[0] == half[0] and rows[-1] == half[-1]       # the windows both runs share log the same
    t = full.train
    for r in rows + half:
        assert r["lr"] == lr_at(r["step"] - 1, lr=t.lr, warmup=1, steps=2 * K, schedule="linear", decay_start=K)
    assert rows[1]["lr"] == t.lr and rows[-1]["lr"] == 0.0  # constant up to step K, then down to 0


def test_prepared_folder_trains_bit_identically_to_the_in_memory_folder(tmp_path):
    """Same folder read from its memory-mapped prepared copy or decoded into memory: same batches, same run."""
    runs = {}
    for storage in ("memory", "prepared"):
        cfg = load_config(ROOT / "configs" / "digits.toml", tiny_overrides(
            tmp_path / storage, 4, **{"data.flip": "true", "data.class_conditional": "true"})
            + folder_sets(tmp_path, storage))
        trainer = Trainer(cfg, progress=False, log=lambda m: None)
        runs[storage] = trainer
        assert (trainer.data.source.endswith(")") and "prepared" in trainer.data.source) == (storage == "prepared")
    mem, prep = runs["memory"], runs["prepared"]
    assert torch.equal(mem.data.x, prep.data.x) and torch.equal(mem.data.y, prep.data.y)
    for step in range(6):  # past one epoch: 24 images, batch 8
        for a, b in zip(mem.fetch(step), prep.fetch(step), strict=True):
            assert torch.equal(a, b)
    for t in runs.values():
        t.train()
    assert_same_state(tmp_path / "memory", tmp_path / "prepared")
    assert metrics(tmp_path / "memory") == metrics(tmp_path / "prepared")


def test_each_rank_reads_only_its_slice_of_the_global_batch(tmp_path):
    cfg = load_config(ROOT / "configs" / "digits.toml", tiny_overrides(tmp_path / "run", 2) + folder_sets(tmp_path))
    trainer = Trainer(cfg, progress=False, log=lambda m: None)
    read = []
    rows = trainer.data.rows
    trainer.data.rows = lambda idx: (read.append(idx.clone()), rows(idx))[1]
    for rank in (0, 1):
        trainer.dist = D.DistInfo(rank=rank, world_size=2)
        for step in (0, 1, 5):
            read.clear()
            x, y = trainer.fetch(step)
            glob = trainer.batch_indices(step)
            assert len(read) == 1 and torch.equal(read[0], glob[rank * 4:(rank + 1) * 4])
            assert torch.equal(x, trainer.data.x[glob[rank * 4:(rank + 1) * 4]])
    # the indices of a step do not depend on which steps were drawn before (prefetch and resume rely on it)
    fresh = Trainer(load_config(ROOT / "configs" / "digits.toml", tiny_overrides(tmp_path / "run2", 2)
                                + folder_sets(tmp_path)), progress=False, log=lambda m: None)
    assert torch.equal(fresh.batch_indices(5), trainer.batch_indices(5))


def test_existing_run_is_not_overwritten_and_other_architecture_is_refused(tmp_path):
    run = tmp_path / "run"
    train(load_config(None, toy_sets(run, 2)), progress=False)
    before = {p: p.read_bytes() for p in run.rglob("*.safetensors")}
    with pytest.raises(UserError, match="already holds checkpoints; pass --resume"):
        Trainer(load_config(None, toy_sets(run, 4)), progress=False)
    with pytest.raises(UserError, match=r"would change what this run trains \(model.options"):
        Trainer(load_config(None, toy_sets(run, 4) + ["model.options={ hidden = 64, num_layers = 2 }"]),
                resume=True, progress=False)
    assert before == {p: p.read_bytes() for p in run.rglob("*.safetensors")}


def test_resume_accepts_a_checkpoint_written_before_a_network_field_existed(tmp_path):
    """A stored network dict without a field added later (MLPConfig.input_scale) is the same network."""
    run = tmp_path / "run"
    train(load_config(None, toy_sets(run, 2)), progress=False, max_steps=1)
    (state,) = run.glob("checkpoints/*/state.json")
    stored = json.loads(state.read_text())
    assert stored["network"].pop("input_scale") == 1.0
    state.write_text(json.dumps(stored))
    assert train(load_config(None, toy_sets(run, 2)), resume=True, progress=False).step == 2
    state = sorted(run.glob("checkpoints/*/state.json"))[-1]
    stored = json.loads(state.read_text())
    stored["network"]["input_scale"] = 2.0  # a value that differs is still refused
    state.write_text(json.dumps(stored))
    with pytest.raises(UserError, match=r"from another architecture \(differs in: input_scale\)"):
        Trainer(load_config(None, toy_sets(run, 3)), resume=True, progress=False)


def test_nan_loss_stops_with_clear_error_and_keeps_last_checkpoint(tmp_path):
    run = tmp_path / "run"
    train(load_config(None, toy_sets(run, 2)), progress=False)
    saved = load_checkpoint(run)
    trainer = Trainer(load_config(None, toy_sets(run, 6)), resume=True, progress=False)
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="loss became nan at step 2"):
        trainer.train()
    again = load_checkpoint(run)
    assert again.step == saved.step == 2
    for k in saved.model:
        assert torch.equal(again.model[k], saved.model[k])


def test_class_conditional_needs_labels_and_batch_must_split(tmp_path):
    with pytest.raises(UserError, match="has no labels"):
        Trainer(load_config(None, toy_sets(tmp_path, 2, **{"data.name": "swiss-roll",
                                                            "data.class_conditional": "true"})), progress=False)
    with pytest.raises(UserError, match="divisible by processes x grad_accum"):
        Trainer(load_config(None, toy_sets(tmp_path, 2, **{"train.grad_accum": 3})), progress=False)


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    a = train(load_config(None, toy_sets(tmp_path / "a", 2)), progress=False)
    b = train(load_config(None, toy_sets(tmp_path / "b", 2, **{"train.grad_accum": 4})), progress=False)
    ca, cb = load_checkpoint(a.run_dir), load_checkpoint(b.run_dir)
    for k in ca.model:
        torch.testing.assert_close(ca.model[k], cb.model[k], rtol=1e-5, atol=1e-6)


def _free_port() -> str:
    """A port free right now, so two test runs on one machine (a CI job beside a developer's) do not
    meet on a fixed rendezvous port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.mark.parametrize("data", ["toy2d", "prepared-folder"])
def test_ddp_two_processes_match_one_process(tmp_path, data):
    """torchrun with 2 gloo processes and the same global batch gives the same weights as 1 process."""
    if data == "toy2d":
        config = ROOT / "configs" / "toy2d.toml"

        def sets(out):
            return toy_sets(out, 3)
    else:  # rank 0 prepares the folder while rank 1 waits; each reads its half of every batch
        config = ROOT / "configs" / "digits.toml"

        def sets(out):
            return tiny_overrides(out, 3, **{"data.flip": "true", "train.sample_n": 2}) + folder_sets(tmp_path)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", _free_port(),
           "-m", "ddpmkit", "train", "--config", str(config), "--no-progress"]
    for s in sets(tmp_path / "ddp"):
        cmd += ["--set", s]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("finished 3 steps") == 1  # rank 0 reports, rank 1 does not
    if data != "toy2d":
        assert proc.stdout.count("prepared ") == 1  # built once, by rank 0
    single = train(load_config(config, sets(tmp_path / "one")), progress=False)
    cd, cs = load_checkpoint(tmp_path / "ddp"), load_checkpoint(single.run_dir)
    assert cd.step == cs.step == 3 and cd.extra["world_size"] == 2
    for k in cs.model:
        torch.testing.assert_close(cd.model[k], cs.model[k], rtol=1e-5, atol=1e-6)
    assert [r["loss"] for r in metrics(tmp_path / "ddp")] == pytest.approx([r["loss"] for r in metrics(single.run_dir)],
                                                                           rel=1e-5)


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16: no layout to measure")
def test_ddp_ranks_take_rank_0s_measured_bf16_layout(tmp_path):
    """Under CPU bf16 the layout is measured once, by rank 0, and every rank runs in it (a near-tie measured
    on each rank could differ, and ranks in different layouts round apart)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", _free_port(),
           "-m", "ddpmkit", "train", "--config", str(ROOT / "configs" / "digits.toml"), "--no-progress"]
    for s in tiny_overrides(tmp_path / "ddp", 2, **{"train.precision": "bf16", "train.sample_n": 2}):
        cmd += ["--set", s]
    env = {**_env(), "DDPMKIT_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("DDPMKIT_BF16_LAYOUT", None)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("timing NCHW vs channels_last") == 1  # rank 0 only
    assert load_checkpoint(tmp_path / "ddp").step == 2


def test_sigint_finishes_the_step_saves_and_exits_zero(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "ddpmkit", "train", "--config", str(ROOT / "configs" / "toy2d.toml"), "--no-progress"]
    for s in toy_sets(run, 100_000):
        cmd += ["--set", s]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").is_file() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "received SIGINT" in out and "stopped at step" in out
    ckpt = load_checkpoint(run)
    assert 2 <= ckpt.step < 100_000


def test_mean_prediction_with_learned_log_variance_trains_on_the_bound(tmp_path):
    """DDPM's Table 2 baseline row (mu~ prediction, L, learned diagonal Sigma) through the trainer: the
    network gets 2x outputs, the loss is finite, and the weights move."""
    over = toy_sets(tmp_path / "run", 3, **{"diffusion.prediction": "mean", "diffusion.variance": "learned",
                                            "diffusion.loss": "vlb", "diffusion.timestep_sampler": "uniform"})
    trainer = Trainer(load_config(None, over), progress=False)
    assert trainer.model.config.learn_sigma
    before = [p.detach().clone() for p in trainer.model.parameters()]
    result = trainer.train()
    assert result.step == 3 and torch.isfinite(torch.tensor(result.last_loss))
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))


def test_loss_must_exist_and_fit_the_variance(tmp_path):
    with pytest.raises(UserError, match="diffusion.loss = 'l2' is not one of: simple, vlb, hybrid"):
        Trainer(load_config(None, toy_sets(tmp_path, 2, **{"diffusion.loss": "l2"})), progress=False)
    with pytest.raises(UserError, match="it needs diffusion.variance = 'learned_range' or 'learned'"):
        Trainer(load_config(None, toy_sets(tmp_path, 2, **{"diffusion.loss": "hybrid"})), progress=False)
