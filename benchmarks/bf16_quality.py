"""Does bf16 training hurt? The Fashion-MNIST recipe trained for the same steps in fp32 and in bf16.

Both runs start from the same seed and see the same batches, t and noise (the trainer derives every
draw from (seed, step)); only ``train.precision`` differs.  They train side by side (one process and
``--threads`` threads each), then ``ddpmkit eval fid`` scores each with DPM-Solver++ (fp32 sampling, so
the comparison is of the training) at ``-n`` samples against the test split, and the bf16 run once
more sampled in bf16.  The JSON keeps both loss curves (the logged means) and the FIDs.

    nice -n 10 .venv/bin/python benchmarks/bf16_quality.py --steps 600 --n 1000

The CPU must have native bf16 (AVX512_BF16 or AMX): elsewhere bf16 falls back to fp32 and the
comparison would be of two identical runs, so the script stops.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _machine import cpu_info

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from ddpmkit.networks.precision import cpu_has_native_bf16  # noqa: E402


def cli(args: list[str], threads: int) -> list[str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return [sys.executable, "-m", "ddpmkit", *args], env


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--n", type=int, default=1000, help="FID samples per run")
    p.add_argument("--sampler-steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="threads per training process (two run at once)")
    p.add_argument("--runs", default=str(ROOT / "runs" / "bf16_quality"))
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "bf16_quality.json"))
    p.add_argument("--note", default="", help="what else ran on the machine (recorded in the JSON)")
    args = p.parse_args(argv)
    if not cpu_has_native_bf16():
        print("this CPU has no native bf16 (AVX512_BF16 or AMX): bf16 would train in fp32; nothing to compare")
        return 2
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    procs, started = {}, time.time()
    for prec in ("fp32", "bf16"):
        out = runs / prec
        if (out / "checkpoints").is_dir():
            print(f"{prec}: {out} exists, reusing it")
            continue
        cmd, env = cli(["train", "--config", "fashion-mnist", "--set", f"run.out_dir={json.dumps(str(out))}",
                        "--set", f"train.steps={args.steps}", "--set", f"train.precision={prec}",
                        "--set", f"run.threads={args.threads}", "--set", "train.sample_every=0",
                        "--set", f"train.checkpoint_every={args.steps}", "--no-progress"], args.threads)
        procs[prec] = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=open(runs / f"{prec}.log", "w"),
                                       stderr=subprocess.STDOUT)
    for prec, proc in procs.items():
        if proc.wait() != 0:
            print(f"{prec} training failed; see {runs / (prec + '.log')}")
            return 1
    train_s = time.time() - started
    result = {"cpu": cpu_info(), "steps": args.steps, "n": args.n, "threads": args.threads, "note": args.note,
              "train_wall_s_side_by_side": train_s, "runs": {}}
    for prec, sample_prec in (("fp32", "fp32"), ("bf16", "fp32"), ("bf16", "bf16")):
        out = runs / prec
        rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln.strip()]
        fid_json = runs / f"fid_{prec}_sampled_{sample_prec}.json"
        if not fid_json.exists():
            cmd, env = cli(["eval", "fid", "--checkpoint", str(out), "--sampler", "dpm++", "--steps",
                            str(args.sampler_steps), "-n", str(args.n), "--ref-split", "test", "--precision",
                            sample_prec, "--json", str(fid_json), "--no-progress"], 2)
            subprocess.run(cmd, env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        fid = json.loads(fid_json.read_text())
        key = f"train {prec}, sample {sample_prec}"
        losses = [r["loss"] for r in rows if "loss" in r]
        result["runs"][key] = {
            "fid": fid.get("fid"), "precision": fid.get("precision"), "recall": fid.get("recall"),
            "confident_fraction": fid.get("confident_fraction"), "confident_classes": fid.get("confident_classes"),
            "loss_curve": [(r["step"], r["loss"]) for r in rows if "loss" in r],
            "loss_last_quarter_median": statistics.median(losses[-max(1, len(losses) // 4):]),
            "img_per_s_median": statistics.median(r["img_per_s"] for r in rows if "img_per_s" in r),
        }
    print(f"| run | FID (n={args.n}, DPM-Solver++ {args.sampler_steps}) | precision | recall | "
          "median loss, last quarter | train img/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for key, r in result["runs"].items():
        print(f"| {key} | {r['fid']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} | "
              f"{r['loss_last_quarter_median']:.4f} | {r['img_per_s_median']:.1f} |")
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
