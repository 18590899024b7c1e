"""Training-step throughput of a config's own network, in fp32 and bf16 and in both memory layouts.

    .venv/bin/python benchmarks/recipe_step.py                       # configs/fashion-mnist.toml
    .venv/bin/python benchmarks/recipe_step.py --config configs/digits.toml --batch 128

unet_speed.py times the presets at their full width; a recipe trains something smaller (the shipped
Fashion-MNIST model is the preset at ch 16), where what bf16 saves in the convolutions and what its
casts cost come out differently.  This times the network the config builds, at its batch size: a whole
step (forward, MSE, backward, fused AdamW, as in the trainer), four variants -- channels_last or NCHW,
fp32 or bf16 autocast (the trainer's CPU bf16 runs in the one measured faster: ``networks/precision.py``) -- interleaved
``--rounds`` times, ``--steps`` steps a round; prints img/s and writes --json with the CPU.  ``--compile``
adds the fp32 variants under ``torch.compile`` (what ``train.compile = true`` runs; their first steps,
the compilation, are timed apart as ``compile_seconds``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from _machine import cpu_info  # noqa: E402

from ddpmkit.config import load_config  # noqa: E402
from ddpmkit.networks.precision import cpu_has_native_bf16  # noqa: E402
from ddpmkit.runs import build_model, resolve_network_config  # noqa: E402

SHAPES = {"fashion-mnist": (1, 28, 28), "digits": (1, 8, 8)}


def make_step(cfg, shape, batch: int, channels_last: bool, bf16: bool, compiled: bool = False):
    model = build_model({**resolve_network_config(cfg, shape, None), "channels_last": channels_last}, seed=0)
    net = torch.compile(model) if compiled else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *shape, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = net(x, t)
        loss = F.mse_loss(out.float(), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "fashion-mnist.toml")
    ap.add_argument("--batch", type=int, default=None, help="default: the config's train.batch_size")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="add fp32 rows under torch.compile")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "recipe_step.json")
    a = ap.parse_args(argv)
    cfg = load_config(a.config, [])
    if cfg.data.name not in SHAPES or cfg.model.kind != "unet":
        raise SystemExit(f"--config: a U-Net config on {', '.join(SHAPES)} data, "
                         f"got {cfg.data.name} / {cfg.model.kind}")
    shape, batch = SHAPES[cfg.data.name], a.batch or cfg.train.batch_size
    torch.set_num_threads(a.threads)
    variants = [(cl, p, False) for p in (("fp32", "bf16") if cpu_has_native_bf16() else ("fp32",))
                for cl in (True, False)]
    if a.compile:
        variants += [(cl, "fp32", True) for cl in (True, False)]
    steps = [make_step(cfg, shape, batch, cl, p == "bf16", c) for cl, p, c in variants]
    first = []
    for s in steps:  # warm-up (for compiled variants: the compilation)
        start = time.perf_counter()
        s()
        first.append(time.perf_counter() - start)
        s()
    secs = [[] for _ in variants]
    for _ in range(a.rounds):
        for k, s in enumerate(steps):
            start = time.perf_counter()
            for _ in range(a.steps):
                s()
            secs[k].append((time.perf_counter() - start) / a.steps)
    rows = []
    print(f"{a.config.name}, batch {batch}, {a.threads} threads, {cpu_info()['model']}")
    for (cl, p, c), s, f in zip(variants, secs, first, strict=True):
        med = statistics.median(s)
        rows.append({"layout": "channels_last" if cl else "nchw", "precision": p, "compiled": c, "batch": batch,
                     "seconds": med, "img_per_s": batch / med, "round_seconds": s,
                     **({"compile_seconds": f} if c else {})})
        print(f"  {rows[-1]['layout']:14} {p}{' compiled' if c else '         '}  {batch / med:8.1f} img/s"
              + (f"   (first step {f:.0f} s)" if c else ""))
    out = {"benchmark": "recipe_step", "config": str(a.config.relative_to(ROOT)) if a.config.is_relative_to(ROOT)
           else str(a.config), "cpu": cpu_info(), "torch": torch.__version__, "threads": a.threads,
           "rounds": a.rounds, "steps_per_round": a.steps, "rows": rows}
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {a.json}")
    return out


if __name__ == "__main__":
    main()
