"""Bad input, every subcommand: exit 2, exactly one ``ddpmkit: error:`` line, no traceback, and no file
anywhere in the sandbox created or changed (paths, sizes and mtimes compared before and after).

Most cases run in this process through ``ddpmkit.cli.main`` (argparse's own errors included, which
exit through SystemExit); a handful run the real ``python -m ddpmkit`` entry point in subprocesses to
show it behaves the same.
"""

import errno
import io
import json
import os
import shutil
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddpmkit.cli import main
from ddpmkit.testing.tiny import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "configs" / "digits.toml")


@pytest.fixture(scope="module")
def sandbox(tiny_run, tmp_path_factory):
    s = tmp_path_factory.mktemp("bad-input")
    shutil.copytree(tiny_run, s / "run")
    ck = next((s / "run" / "checkpoints").glob("step_*")).name
    for name in ("trunc", "rand", "noopt", "nokeys", "garbage", "nan", "wrongnet"):
        shutil.copytree(tiny_run, s / name)
    c = {name: s / name / "checkpoints" / ck for name in ("trunc", "rand", "noopt", "nokeys", "garbage", "nan",
                                                          "wrongnet")}
    model = (c["trunc"] / "model.safetensors").read_bytes()
    (c["trunc"] / "model.safetensors").write_bytes(model[: len(model) // 2])
    (c["rand"] / "ema.safetensors").write_bytes(np.random.default_rng(0).bytes(len(model)))
    (c["noopt"] / "optim.safetensors").unlink()
    state = json.loads((c["nokeys"] / "state.json").read_text())
    (c["garbage"] / "state.json").write_text("{not json")
    (c["wrongnet"] / "state.json").write_text(json.dumps({**state, "network": {**state["network"], "ch": 16}}))
    del state["config"]
    (c["nokeys"] / "state.json").write_text(json.dumps(state))
    from safetensors.torch import load_file, save_file
    ema = load_file(str(c["nan"] / "ema.safetensors"))
    save_file({k: v * float("nan") for k, v in ema.items()}, str(c["nan"] / "ema.safetensors"))
    (s / "cfg.toml").write_text(Path(DIGITS).read_text())
    (s / "bad.toml").write_text("[train\nsteps = 3")
    (s / "table.toml").write_text("train = 3\n")
    (s / "afile").write_text("a file, not a directory")
    (s / "notes").mkdir()
    (s / "notes" / "a.txt").write_text("keep me")
    (s / "noimages").mkdir()
    (s / "noimages" / "readme.txt").write_text("no pictures here")
    (s / "text.png").write_text("not an image")
    Image.fromarray(np.zeros((8, 8), np.float32)).save(s / "float.tif")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(s / "ok.png")
    (s / "cwd").mkdir()
    if os.geteuid() == 0:  # root writes through file permissions; sysfs refuses new directories
        ro = Path("/sys/ddpmkit-read-only")
    else:
        (s / "ro").mkdir()
        os.chmod(s / "ro", 0o555)
        ro = s / "ro"
    return {"S": str(s), "RO": str(ro)}


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size, p.is_dir())
            for p in [root, *root.rglob("*")]}


def train_args(*sets, out="{S}/newrun"):
    args = ["train", "--config", DIGITS, "--no-progress"]
    for s in [*tiny_overrides(out), *sets]:
        args += ["--set", s]
    return args


def sample_args(*extra, ckpt="{S}/run"):
    return ["sample", "--checkpoint", ckpt, "-n", "2", "--steps", "2", "--no-progress", "--out", "{S}/x.png", *extra]


def eval_args(what, *extra, ckpt="{S}/run"):
    return ["eval", what, "--checkpoint", ckpt, "--no-progress", "--data-dir", "{S}/nodata", *extra]


CASES = [
    # --- train: every config field's type, range and name ---------------------------------------
    ("log_every=0", train_args("train.log_every=0"), "train.log_every must be >= 1"),
    ("betas-one", train_args("train.adam_betas=[0.9]"), "train.adam_betas must be two numbers"),
    ("betas-range", train_args("train.adam_betas=[0.9, 1.5]"), "train.adam_betas[1] must lie in [0.0, 1.0)"),
    ("betas-str", train_args('train.adam_betas=["a", "b"]'), "train.adam_betas must be two numbers"),
    ("lr-neg", train_args("train.lr=-1e-4"), "train.lr must be > 0"),
    ("lr-nan", train_args("train.lr=nan"), "train.lr must be a finite number"),
    ("lr-inf", train_args("train.lr=inf"), "train.lr must be a finite number"),
    ("lr-str", train_args("train.lr=fast"), "train.lr must be a float"),
    ("steps-str", train_args("train.steps=many"), "train.steps must be an integer"),
    ("steps-neg", train_args("train.steps=-5"), "train.steps must be >= 0"),
    ("steps-float", train_args("train.steps=2.5"), "train.steps must be an integer"),
    ("flip-int", train_args("data.flip=1"), "data.flip must be true or false"),
    ("sample_n=0", train_args("train.sample_n=0"), "train.sample_n must be >= 1"),
    ("sample_sampler", train_args("train.sample_sampler=euler"), "train.sample_sampler = 'euler' is not one of"),
    ("sample-steps", train_args("train.sample_steps=0"), "train.sample_steps must be >= 1"),
    ("loss-name", train_args("diffusion.loss=l2"), "diffusion.loss = 'l2' is not one of"),
    ("hybrid-fixed", train_args("diffusion.loss=hybrid"), "needs diffusion.variance = 'learned_range'"),
    ("schedule", train_args("diffusion.schedule=wavy"), "diffusion.schedule"),
    ("timesteps=0", train_args("diffusion.timesteps=0"), "diffusion.timesteps must be >= 1"),
    ("prediction", train_args("diffusion.prediction=score"), "diffusion.prediction = 'score' is not one of"),
    ("variance", train_args("diffusion.variance=big"), "diffusion.variance = 'big' is not one of"),
    ("t-sampler", train_args("diffusion.timestep_sampler=fancy"), "diffusion.timestep_sampler"),
    ("lognormal-std", train_args("diffusion.lognormal_std=0"), "diffusion.lognormal_std must be > 0"),
    ("lognormal-mean", train_args("diffusion.lognormal_mean=nan"), "diffusion.lognormal_mean must be a finite"),
    ("weighting-name", train_args("diffusion.loss_weighting=snr"), "diffusion.loss_weighting = 'snr' is not one of"),
    ("weighting-vlb", train_args("diffusion.loss_weighting=min_snr", "diffusion.loss=vlb"),
     "diffusion.loss_weighting: loss weighting 'min_snr' weights the simple (MSE) loss; loss 'vlb' has none"),
    ("weighting-mean", train_args("diffusion.loss_weighting=p2", "diffusion.prediction=mean"),
     "needs prediction 'eps' / 'x0' / 'v', got 'mean'"),
    ("min-snr-gamma", train_args("diffusion.min_snr_gamma=0"), "diffusion.min_snr_gamma must be > 0"),
    ("p2-gamma", train_args("diffusion.p2_gamma=-1"), "diffusion.p2_gamma must be >= 0"),
    ("p2-k", train_args("diffusion.p2_k=0"), "diffusion.p2_k must be > 0"),
    ("lr-schedule", train_args("train.lr_schedule=step"), "train.lr_schedule = 'step' is not one of"),
    ("lr-min-neg", train_args("train.lr_min=-1e-5"), "train.lr_min must be >= 0"),
    ("lr-min-above", train_args("train.lr_schedule=cosine", "train.lr_min=1"), "train.lr_min = 1.0 must not exceed"),
    ("lr-decay-start-neg", train_args("train.lr_decay_start=-1"), "train.lr_decay_start must be >= 0"),
    ("lr-decay-start-late", train_args("train.lr_schedule=linear", "train.lr_decay_start=100000"),
     "train.lr_decay_start = 100000 must be below train.steps"),
    ("ema-kind", train_args("train.ema=karras"), "train.ema = 'karras' is not one of"),
    ("ema-std", train_args("train.ema_std=0.5"), "train.ema_std must lie in (0.0, 0.2887]"),
    ("ema-std-zero", train_args("train.ema_std=0"), "train.ema_std must lie in"),
    ("data-name", train_args("data.name=mnist2"), "data.name: unknown dataset 'mnist2'"),
    ("channels", train_args("data.channels=2"), "data.channels = 2 is not one of"),
    ("image-size", train_args("data.image_size=-1"), "data.image_size must be >= 0"),
    ("model-kind", train_args("model.kind=transformer"), "model.kind = 'transformer' is not one of"),
    ("model-preset", train_args("model.preset=huge"), "[model]"),
    ("precision", train_args("train.precision=fp8"), "train.precision = 'fp8' is not one of"),
    ("ema-decay", train_args("train.ema_decay=1.5"), "train.ema_decay must lie in [0, 1]"),
    ("cond-drop", train_args("train.cond_drop_prob=-0.1"), "train.cond_drop_prob must lie in [0, 1]"),
    ("batch=0", train_args("train.batch_size=0"), "train.batch_size must be >= 1"),
    ("accum-split", train_args("train.grad_accum=3"), "must be divisible by processes x grad_accum"),
    ("keep=-1", train_args("train.keep_checkpoints=-1"), "train.keep_checkpoints must be >= 0"),
    ("ckpt-every", train_args("train.checkpoint_every=-1"), "train.checkpoint_every must be >= 0"),
    ("warmup", train_args("train.warmup=-1"), "train.warmup must be >= 0"),
    ("clip", train_args("train.grad_clip=-1"), "train.grad_clip must be >= 0"),
    ("wd", train_args("train.weight_decay=-0.1"), "train.weight_decay must be >= 0"),
    ("seed-huge", train_args("run.seed=99999999999999999999"), "run.seed must lie in"),
    ("threads", train_args("run.threads=-2"), "run.threads must be >= 0"),
    ("device-name", train_args("run.device=tpu"), "run.device 'tpu' is not a device"),
    ("device-missing", train_args("run.device=cuda:7"), "run.device 'cuda:7'"),
    ("out-is-file", train_args(out="{S}/afile"), "run.out_dir {S}/afile exists and is not a directory"),
    ("out-under-file", train_args(out="{S}/afile/run"), "{S}/afile is a file"),
    ("out-read-only", train_args(out="{RO}/run"), "run.out_dir"),
    ("unknown-key", train_args("train.lrr=1"), "unknown key 'lrr' in [train]"),
    ("unknown-section", train_args("bogus.x=1"), "unknown section 'bogus'"),
    ("set-no-equals", train_args("train.lr"), "--set expects section.key=value"),
    ("set-no-section", train_args("lr=1"), "--set key must look like section.key"),
    ("options-not-table", train_args("model.options=3"), "model.options must be a dict"),
    ("image-folder-empty", train_args("data.name=image-folder", 'data.data_dir="{S}/noimages"',
                                      "data.image_size=8"), "PNG/JPEG images found under {S}/noimages"),
    ("config-missing", ["train", "--config", "{S}/none.toml"], "config file not found: {S}/none.toml"),
    ("config-bad-toml", ["train", "--config", "{S}/bad.toml"], "not valid TOML"),
    ("config-not-table", ["train", "--config", "{S}/table.toml"], "[train] must be a table"),
    ("no-config", ["train"], "train needs --config FILE"),
    ("resume-empty", ["train", "--resume", "{S}/notes"], "--resume: no checkpoint found"),
    ("resume-timesteps", ["train", "--resume", "{S}/run", "--set", "diffusion.timesteps=30"],
     "would change what this run trains (diffusion.timesteps: 20 in the checkpoint, 30 given)"),
    ("resume-data", ["train", "--resume", "{S}/run", "--set", "data.flip=true"], "(data.flip: False"),
    ("max-steps-0", ["train", "--config", DIGITS, "--max-steps", "0"], "expected an integer >= 1"),
    # --- sample -----------------------------------------------------------------------------------
    ("sample-missing", sample_args(ckpt="{S}/none"), "no run or checkpoint at {S}/none"),
    ("sample-ckpt-file", sample_args(ckpt="{S}/afile"), "is a file; give a run directory"),
    ("sample-cuda", sample_args("--device", "cuda:3"), "--device 'cuda:3'"),
    ("sample-device", sample_args("--device", "quantum"), "--device 'quantum' is not a device"),
    ("sample-eta-neg", sample_args("--eta", "-1"), "--eta must be >= 0"),
    ("sample-eta-nan", sample_args("--eta", "nan"), "--eta must be a finite number"),
    ("sample-guidance-inf", sample_args("--guidance", "inf"), "--guidance must be a finite number"),
    ("sample-n=0", ["sample", "--checkpoint", "{S}/run", "-n", "0", "--out", "{S}/x.png"], "argument -n"),
    ("sample-steps>T", sample_args("--steps", "500"), "1..20"),
    ("sample-sampler", sample_args("--sampler", "euler"), "argument --sampler: invalid choice"),
    ("sample-seed", sample_args("--seed", "99999999999999999999"), "--seed must lie in"),
    ("sample-class", sample_args("--class", "-2"), "--class must be >= 0"),
    ("sample-out-dir", sample_args("--out", "{S}/notes"), "--out {S}/notes is a directory"),
    ("sample-out-under-file", sample_args("--out", "{S}/afile/x.png"), "{S}/afile exists and is not a directory"),
    ("sample-out-suffix", sample_args("--out", "{S}/x.xyz"), "unsupported file type '.xyz'"),
    ("sample-npy-suffix", sample_args("--npy", "{S}/x.txt"), "--npy {S}/x.txt: unsupported file type"),
    ("sample-trajectory", sample_args("--trajectory", "5,-1"), "--trajectory must be >= 0"),
    ("sample-trajectory-int", sample_args("--trajectory", "5,a"), "expected comma-separated integers"),
    ("sample-truncated", sample_args(ckpt="{S}/trunc"), "is damaged: model.safetensors has"),
    ("sample-random-bytes", sample_args(ckpt="{S}/rand"), "not a safetensors file"),
    ("sample-no-optim", sample_args(ckpt="{S}/noopt"), "incomplete: state.json records optim.safetensors"),
    ("sample-state-keys", sample_args(ckpt="{S}/nokeys"), "lacks config"),
    ("sample-state-garbage", sample_args(ckpt="{S}/garbage"), "unreadable checkpoint"),
    ("sample-nan", sample_args(ckpt="{S}/nan"), "holds non-finite weights"),
    ("sample-wrong-network", sample_args(ckpt="{S}/wrongnet"), "does not match its stored network config"),
    ("sample-pretrained", sample_args(ckpt="pretrained:nothing"), "no pretrained model 'nothing'"),
    # --- forward ------------------------------------------------------------------------------------
    ("forward-missing", ["forward", "--image", "{S}/none.png", "--out", "{S}/f.png"], "cannot read image"),
    ("forward-not-image", ["forward", "--image", "{S}/text.png", "--out", "{S}/f.png"], "cannot read image"),
    ("forward-float", ["forward", "--image", "{S}/float.tif", "--out", "{S}/f.png"], "mode 'F' are not supported"),
    ("forward-steps", ["forward", "--image", "{S}/ok.png", "--steps", "0,5000", "--out", "{S}/f.png"],
     "--steps must lie in 0..999"),
    ("forward-schedule", ["forward", "--image", "{S}/ok.png", "--schedule", "wobbly", "--out", "{S}/f.png"],
     "wobbly"),
    ("forward-out-dir", ["forward", "--image", "{S}/ok.png", "--out", "{S}/notes"], "is a directory"),
    ("forward-nothing", ["forward", "--out", "{S}/f.png"], "give --image FILE"),
    ("forward-index", ["forward", "--checkpoint", "{S}/run", "--index", "99999", "--out", "{S}/f.png"],
     "--index 99999"),
    ("forward-timesteps", ["forward", "--image", "{S}/ok.png", "--timesteps", "0", "--out", "{S}/f.png"],
     "argument --timesteps"),
    # --- info, export, plot, demo ------------------------------------------------------------------
    ("info-missing", ["info", "{S}/none"], "no run or checkpoint"),
    ("info-truncated", ["info", "{S}/trunc"], "is damaged"),
    ("export-cwd", ["export", "{S}/run", "--out", ".", "--force"], "is the current directory"),
    ("export-parent-of-cwd", ["export", "{S}/run", "--out", "{S}", "--force"], "is the current directory"),
    ("export-run", ["export", "{S}/run", "--out", "{S}/run", "--force"], "would overlap the checkpoint"),
    ("export-ckpts", ["export", "{S}/run", "--out", "{S}/run/checkpoints", "--force"], "would overlap"),
    ("export-not-export", ["export", "{S}/run", "--out", "{S}/notes", "--force"], "replaces only an earlier export"),
    ("export-not-empty", ["export", "{S}/run", "--out", "{S}/notes"], "exists and is not empty"),
    ("export-out-file", ["export", "{S}/run", "--out", "{S}/afile"], "exists and is not a directory"),
    ("export-missing", ["export", "{S}/none", "--out", "{S}/e"], "no run or checkpoint"),
    ("export-diffusers-not-export", ["export", "{S}/run", "--diffusers", "--out", "{S}/notes", "--force"],
     "holds something other than a diffusers pipeline export"),
    ("plot-no-run", ["plot", "loss", "--out", "{S}/l.png"], "the following arguments are required: run"),
    ("plot-no-metrics", ["plot", "loss", "{S}/notes", "--out", "{S}/l.png"], "no metrics.jsonl"),
    ("plot-suffix", ["plot", "schedules", "--out", "{S}/s.gif"], "unsupported file type '.gif'"),
    ("plot-what", ["plot", "curves", "--out", "{S}/s.png"], "argument WHAT: invalid choice"),
    ("demo-config", ["demo", "--config", "{S}/none.toml", "--out", "{S}/demo"], "config file not found"),
    ("configs-unknown", ["configs", "nosuch"], "no shipped config 'nosuch'"),
    ("configs-out-exists", ["configs", "digits", "--out", "{S}/afile"], "exists; not overwriting it"),
    ("configs-out-under-file", ["configs", "digits", "--out", "{S}/afile/x.toml"], "is not a directory"),
    ("cpu-profile-preset", ["cpu-profile", "--case", "nosuch:2"], "unknown U-Net preset 'nosuch'"),
    ("cpu-profile-case", ["cpu-profile", "--case", "digits:0"], "expected PRESET:BATCH"),
    ("cpu-profile-repeats", ["cpu-profile", "--repeats", "0"], "--repeats"),
    ("demo-out-file", ["demo", "--out", "{S}/afile"], "exists and is not a directory"),
    # --- eval ------------------------------------------------------------------------------------------
    ("nll-missing", eval_args("nll", ckpt="{S}/none"), "no run or checkpoint"),
    ("nll-device", eval_args("nll", "--device", "cuda:9"), "--device 'cuda:9'"),
    ("nll-json-suffix", eval_args("nll", "--json", "{S}/r.csv"), "--json {S}/r.csv: unsupported file type"),
    ("nll-split", eval_args("nll", "--split", "val"), "argument --split: invalid choice"),
    ("rd-out-file", eval_args("rate-distortion", "--out", "{S}/afile"), "--out {S}/afile exists and is not a"),
    ("rd-out-under-file", eval_args("rate-distortion", "--out", "{S}/afile/rd"), "{S}/afile is a file"),
    ("rd-columns", eval_args("rate-distortion", "--out", "{S}/rd", "--columns", "-1"), "--columns must be >= 0"),
    ("fid-few", eval_args("fid", "-n", "1"), "too few samples"),
    ("fid-k", eval_args("fid", "-k", "0"), "argument -k/--k"),
    ("fid-nan", eval_args("fid", "-n", "8", ckpt="{S}/nan"), "holds non-finite weights"),
    ("no-command", [], "the following arguments are required: COMMAND"),
    ("unknown-command", ["frobnicate"], "argument COMMAND: invalid choice"),
]


def fill(text: str, sandbox: dict) -> str:
    for key, value in sandbox.items():
        text = text.replace("{" + key + "}", value)
    return text


def run_in_process(argv: list[str]) -> tuple[int, str]:
    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse
            code = e.code
    return code, err.getvalue()


def check_one_error_line(code, err: str, expect: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ddpmkit: error: "), err
    assert expect in lines[0], lines[0]


def test_there_are_enough_cases_across_all_subcommands():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)
    firsts = {argv[0] for _, argv, _ in CASES if argv}
    assert {"train", "sample", "forward", "info", "export", "plot", "demo", "eval", "configs", "cpu-profile"} <= firsts


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case, sandbox, monkeypatch):
    _, argv, expect = case
    root = Path(sandbox["S"])
    monkeypatch.chdir(root / "cwd")
    argv = [fill(a, sandbox) for a in argv]
    before = snapshot(root)
    code, err = run_in_process(argv)
    check_one_error_line(code, err, fill(expect, sandbox))
    assert snapshot(root) == before
    assert not Path(sandbox["RO"]).exists() or sandbox["RO"].startswith(sandbox["S"])


def test_disk_full_during_a_checkpoint_save_is_one_line_and_keeps_nothing_half_written(sandbox, monkeypatch):
    import ddpmkit.checkpoint as C

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(C, "_write_bytes_synced", full)
    root = Path(sandbox["S"])
    before = snapshot(root)
    out = root.parent / "disk-full-run"  # the intended output, outside the snapshot
    code, err = run_in_process([fill(a, sandbox) for a in train_args(out=str(out))])
    check_one_error_line(code, err, "No space left on device (the previous checkpoint is kept)")
    assert snapshot(root) == before
    assert [p.name for p in (out / "checkpoints").iterdir()] == []  # no temporary directory left behind


SUBPROCESS_CASES = ["lr-nan", "sample-cuda", "export-cwd", "forward-float", "rd-out-file", "sample-n=0"]


def test_the_real_entry_point_behaves_the_same(sandbox):
    root = Path(sandbox["S"])
    before = snapshot(root)
    cases = {c[0]: c for c in CASES}
    procs = []
    for name in SUBPROCESS_CASES:
        _, argv, expect = cases[name]
        argv = [fill(a, sandbox) for a in argv]
        procs.append((expect, subprocess.Popen([sys.executable, "-m", "ddpmkit", *argv], cwd=root / "cwd",
                                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    for expect, proc in procs:
        _, err = proc.communicate(timeout=300)
        check_one_error_line(proc.returncode, err, fill(expect, sandbox))
    assert snapshot(root) == before
