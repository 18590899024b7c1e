import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from ddpmkit.checkpoint import Checkpoint, find_checkpoint, load_checkpoint, save_checkpoint


def _ckpt(step, size=10):
    model = {"w": torch.full((size,), float(step)), "b": torch.arange(3) + step}
    return Checkpoint(step=step, config={"c": 1}, network={"kind": "mlp"}, model=model,
                      ema={k: v * 2 for k, v in model.items()})


def test_round_trip_with_optimizer_state(tmp_path):
    net = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net(torch.randn(5, 4)).sum().backward()
    opt.step()
    ckpt = Checkpoint(step=7, config={"a": [1, 2]}, network={"kind": "mlp"}, model=net.state_dict(),
                      ema=net.state_dict(), optimizer=opt.state_dict(), extra={"window": {"n": 1}},
                      extra_tensors={"hist": torch.arange(6.0).view(2, 3)})
    path = save_checkpoint(tmp_path, ckpt)
    assert sorted(p.name for p in path.iterdir()) == ["ema.safetensors", "model.safetensors", "optim.safetensors",
                                                      "state.json"]
    back = load_checkpoint(tmp_path)
    assert back.step == 7 and back.config == {"a": [1, 2]} and back.extra == {"window": {"n": 1}}
    assert torch.equal(back.extra_tensors["hist"], torch.arange(6.0).view(2, 3))
    for k, v in net.state_dict().items():
        assert torch.equal(back.model[k], v) and torch.equal(back.ema[k], v)
    # the restored optimizer continues exactly like the original
    net2 = torch.nn.Linear(4, 3)
    net2.load_state_dict(back.model)
    opt2 = torch.optim.AdamW(net2.parameters(), lr=1e-3)
    opt2.load_state_dict(back.optimizer)
    x = torch.randn(5, 4)
    for n, o in ((net, opt), (net2, opt2)):
        o.zero_grad()
        n(x).sum().backward()
        o.step()
    for a, b in zip(net.parameters(), net2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_latest_pointer_and_keep_last_n(tmp_path):
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, _ckpt(step), keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert names == ["step_00000003", "step_00000004"]
    assert load_checkpoint(tmp_path).step == 4
    assert find_checkpoint(tmp_path / "checkpoints") == tmp_path / "checkpoints" / "step_00000004"
    assert load_checkpoint(tmp_path / "checkpoints" / "step_00000003").step == 3
    # a broken 'latest' falls back to the newest complete checkpoint
    (tmp_path / "checkpoints" / "latest").write_text("step_99999999")
    assert load_checkpoint(tmp_path).step == 4


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    from ddpmkit.errors import UserError

    with pytest.raises(UserError, match="no run or checkpoint"):
        load_checkpoint(tmp_path / "missing")
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(UserError, match="no checkpoint found"):
        load_checkpoint(tmp_path)


WRITER = """
import sys, torch
from ddpmkit.checkpoint import Checkpoint, save_checkpoint
run = sys.argv[1]
step = 0
while True:
    step += 1
    model = {"w": torch.full((400_000,), float(step)), "b": torch.full((1000,), float(step))}
    save_checkpoint(run, Checkpoint(step=step, config={"step": step}, network={}, model=model,
                                    ema={"w": model["w"] * 2}), keep=2)
    print(step, flush=True)
"""


def test_sigkill_at_random_moments_never_leaves_an_unreadable_latest(tmp_path):
    """A writer saves ~3 MB checkpoints in a loop; we SIGKILL it at random moments, then read."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    rng = random.Random(0)
    run = tmp_path / "run"
    last_seen = 0
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, str(script), str(run)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip()  # at least one checkpoint written by this process
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ckpt = load_checkpoint(run)
        assert ckpt.step >= 1 and ckpt.config == {"step": ckpt.step}
        assert torch.all(ckpt.model["w"] == ckpt.step) and torch.all(ckpt.ema["w"] == 2 * ckpt.step)
        last_seen = ckpt.step
    assert last_seen >= 1
    leftovers = [p for p in os.listdir(run / "checkpoints") if p.startswith(".tmp-")]
    assert len(leftovers) <= 1  # at most the one interrupted save; the next save removes it
