"""bf16 autocast on CPU: NCHW vs channels_last for each benchmark network, interleaved in one run.

    .venv/bin/python benchmarks/bf16_layout.py                 # 7 pairs a row
    .venv/bin/python benchmarks/bf16_layout.py --pairs 3 --json /tmp/layout.json

``networks/precision.py`` picks the layout a network runs in under CPU bf16 by a short measurement of
that network on this machine (cached).  This is the long form behind that choice: for the ddpm-cifar10
and fashion-mnist presets and the shipped recipe's network (configs/fashion-mnist.toml: the preset at
ch 16), a whole training step (forward, MSE, backward, fused AdamW) and an inference forward, each in
both layouts, alternating which goes first, ``--pairs`` pairs after two warm-up runs each.  Prints img/s
and the median per-pair ratio t_NCHW / t_channels_last (> 1: channels_last is faster) and writes --json
with the CPU (default benchmarks/results/bf16_layout.json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from _machine import cpu_info  # noqa: E402
from unet_speed import Case  # noqa: E402

from ddpmkit.config import load_config  # noqa: E402
from ddpmkit.networks.precision import cpu_has_native_bf16, time_interleaved  # noqa: E402
from ddpmkit.networks.unet import UNet, unet_preset  # noqa: E402
from ddpmkit.runs import build_model, resolve_network_config  # noqa: E402

CASES = (("ddpm-cifar10", 8), ("fashion-mnist", 32), ("fashion-mnist", 128), ("recipe", 64))


def network(name: str, channels_last: bool):
    if name == "recipe":
        cfg = load_config(ROOT / "configs" / "fashion-mnist.toml")
        model = build_model({**resolve_network_config(cfg, (1, 28, 28), None), "channels_last": channels_last},
                            seed=0)
        return model, model.config
    cfg = unet_preset(name, channels_last=channels_last)
    torch.manual_seed(0)
    return UNet(cfg), cfg


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--networks", nargs="+", choices=sorted({n for n, _ in CASES}), default=None,
                    help="only these rows (default: all)")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "bf16_layout.json")
    ap.add_argument("--note", default="", help="what else ran on the machine (recorded in the JSON)")
    args = ap.parse_args(argv)
    if args.pairs < 1:
        raise SystemExit("--pairs must be at least 1")
    torch.set_num_threads(args.threads)
    if not cpu_has_native_bf16():
        print("note: this CPU has no native bf16; autocast emulates it, so these times say little", file=sys.stderr)
    rows = []
    print(f"{'network':14s} {'mode':5s} {'batch':>5s} {'NCHW img/s':>11s} {'CL img/s':>9s} {'t_NCHW/t_CL':>11s}")
    for name, batch in CASES:
        if args.networks and name not in args.networks:
            continue
        for mode in ("train", "infer"):
            cases = {}
            for layout in (False, True):
                model, cfg = network(name, layout)
                cases[layout] = Case(model, cfg, batch, precision="bf16", library_layout=False)
            secs = time_interleaved({layout: (lambda c=c, m=mode: c.run(m)) for layout, c in cases.items()},
                                    args.pairs, warmup=2)
            t_nchw, t_cl = secs[False], secs[True]
            ratio = statistics.median(a / b for a, b in zip(t_nchw, t_cl, strict=True))
            row = {"network": name, "mode": mode, "batch": batch, "nchw_img_s": batch / statistics.median(t_nchw),
                   "channels_last_img_s": batch / statistics.median(t_cl), "nchw_over_channels_last": ratio}
            rows.append(row)
            print(f"{name:14s} {mode:5s} {batch:5d} {row['nchw_img_s']:11.1f} {row['channels_last_img_s']:9.1f} "
                  f"{ratio:11.2f}", flush=True)
    out = {"benchmark": "bf16_layout", "cpu": cpu_info(), "threads": args.threads, "pairs": args.pairs,
           "torch": torch.__version__, "load_note": args.note, "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
