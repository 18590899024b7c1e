"""Fault injection: ``save_checkpoint`` killed at each of its file-system operations in turn.

A child process resumes a tiny two-moons run at step 2 (checkpoints at steps 1 and 2), then, for
every k, forks a grandchild that makes its k-th file-system call (open, os.open, mkdir, fsync,
rename, replace, unlink, rmdir, chmod, rmtree) end the process with ``os._exit`` -- a SIGKILL
at that exact point, as far as the disk is concerned.  Two saves are attacked: a new step (3, with
pruning to 2 checkpoints) and a re-save of step 2 (keeping 1 checkpoint, the case that used to lose
the run).  After each kill the child checks that the newest loadable checkpoint is the old or the
new one, complete and equal to what was saved, that the next start removes every leftover, and
that ``--resume`` from it reaches step 4 bit for bit like an uninterrupted run.
"""

import json
import subprocess
import sys

from ddpmkit.checkpoint import load_checkpoint
from ddpmkit.config import load_config
from ddpmkit.testing.tiny import toy_overrides
from ddpmkit.training.trainer import train

CHILD = r'''
import builtins, json, os, shutil, sys
from pathlib import Path

import torch
torch.set_num_threads(1)  # no thread pool to trip over in forked children

from ddpmkit.config import load_config
from ddpmkit.testing.tiny import toy_overrides
from ddpmkit.checkpoint import load_checkpoint, save_checkpoint
from ddpmkit.training.trainer import Trainer

base, work, reference = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
SETS = json.loads(sys.argv[4])
OPS = [(os, "open"), (os, "mkdir"), (os, "fsync"), (os, "rename"), (os, "replace"), (os, "unlink"),
       (os, "rmdir"), (os, "chmod"), (shutil, "rmtree"), (builtins, "open")]


def trainer(run):
    return Trainer(load_config(None, toy_overrides(run, 4, **SETS)), resume=True, progress=False,
                   log=lambda msg: None)


def state_of(ck):
    out = {f"model.{k}": v for k, v in ck.model.items()}
    out.update({f"ema.{k}": v for k, v in ck.ema.items()})
    out.update({f"extra.{k}": torch.as_tensor(v) for k, v in ck.extra_tensors.items()})
    for i, per in ck.optimizer["state"].items():
        out.update({f"opt.{i}.{k}": torch.as_tensor(v) for k, v in per.items()})
    return out


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def frozen(ck):
    """A copy whose tensors later training steps cannot change."""
    ck.model = {k: v.clone() for k, v in ck.model.items()}
    ck.ema = {k: v.clone() for k, v in ck.ema.items()}
    ck.optimizer = {"state": {i: {k: v.clone() if torch.is_tensor(v) else v for k, v in per.items()}
                              for i, per in ck.optimizer["state"].items()},
                    "param_groups": json.loads(json.dumps(ck.optimizer["param_groups"]))}
    return ck


def patched(limit):
    """Install counters on every file-system call; the ``limit``-th call ends the process."""
    calls = []
    for mod, name in OPS:
        real = getattr(mod, name)
        def wrapper(*a, _real=real, _name=f"{mod.__name__}.{name}", **kw):
            calls.append(_name)
            if len(calls) == limit:
                os._exit(17)
            return _real(*a, **kw)
        setattr(mod, name, wrapper)
    return calls


t = trainer(base)
old = state_of(load_checkpoint(base))
resave = frozen(t.make_checkpoint())
resave.extra["marker"] = "resaved"
t.train_step()
new = frozen(t.make_checkpoint())
ref = state_of(load_checkpoint(reference))
scenarios = {"new-step": (new, 2, {2: old, 3: state_of(new)}),
             "re-save": (resave, 1, {2: old})}
results = []
for name, (ck, keep, expect) in scenarios.items():
    probe = work / f"{name}-count"
    shutil.copytree(base, probe)
    calls = patched(limit=-1)
    save_checkpoint(probe, ck, keep=keep)
    for mod, fn in OPS:  # undo: the originals live in the wrappers' defaults
        setattr(mod, fn, getattr(mod, fn).__kwdefaults__["_real"])
    names = list(calls)
    for k in range(1, len(names) + 2):
        case = work / f"{name}-{k}"
        shutil.copytree(base, case)
        pid = os.fork()
        if pid == 0:
            patched(limit=k)
            save_checkpoint(case, ck, keep=keep)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        row = {"scenario": name, "k": k, "op": names[k - 1] if k <= len(names) else None,
               "exit": os.waitstatus_to_exitcode(status)}
        results.append(row)
        try:
            got = load_checkpoint(case)
        except Exception as e:
            row["error"] = repr(e)
            continue
        which = "new" if (got.step == 3 or got.extra.get("marker") == "resaved") else "old"
        complete = got.step in expect and same(state_of(got), expect[got.step])
        resumed = trainer(case)  # the next start: cleans leftovers, then continues
        leftovers = sorted(p.name for p in (case / "checkpoints").iterdir()
                           if p.name != "latest" and not (p / "state.json").is_file())
        while resumed.step < 4:
            resumed.train_step()
        exact = same(state_of(resumed.make_checkpoint()), ref)
        row.update({"step": got.step, "which": which, "complete": complete, "leftovers": leftovers,
                    "resume_exact": exact})
        shutil.rmtree(case)
print(json.dumps(results))
'''


def test_kill_at_every_file_system_call_of_save_checkpoint(tmp_path):
    sets = {"train.checkpoint_every": 1, "train.keep_checkpoints": 2}
    reference, base = tmp_path / "reference", tmp_path / "base"
    train(load_config(None, toy_overrides(reference, 4, **sets)), progress=False)
    train(load_config(None, toy_overrides(base, 4, **sets)), progress=False, max_steps=2)
    assert load_checkpoint(base).step == 2 and load_checkpoint(reference).step == 4
    work = tmp_path / "work"
    work.mkdir()
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.run([sys.executable, str(script), str(base), str(work), str(reference), json.dumps(sets)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for scenario in ("new-step", "re-save"):
        rows = [r for r in results if r["scenario"] == scenario]
        ops = {r["op"] for r in rows}
        assert {"builtins.open", "os.open", "os.fsync", "os.rename", "os.replace", "shutil.rmtree", "os.unlink",
                "os.rmdir", "os.mkdir"} <= ops, ops
        *killed, finished = rows
        assert all(r["exit"] == 17 for r in killed) and finished["exit"] == 0
        for r in rows:
            assert "error" not in r and r["complete"] and r["resume_exact"] and r["leftovers"] == [], r
        assert finished["which"] == "new"
        # early kills keep the old checkpoint, late ones (after `latest` moved) the new one; never neither
        flips = [r["which"] for r in rows]
        assert flips[0] == "old" and flips == sorted(flips, key=["old", "new"].index)
