"""DDPM's Table 2 (Ho et al. 2020) at CPU scale: six (prediction, objective, variance) rows on digits.

Each row trains the network of configs/digits.toml from the same seed, on the same data, for the same
number of steps with t drawn uniformly (as in DDPM), changing only ``diffusion.prediction``,
``diffusion.loss`` and ``diffusion.variance``; then ``ddpmkit eval fid`` (n samples, DDPM ancestral
over all 1000 steps, the shipped digits-classifier features) and ``ddpmkit eval nll`` (the full
bound on the digits test split) score it.  A run whose loss becomes NaN/inf stops (the trainer refuses
to step on it) and is marked diverged; its row gets no FID.

    PYTHONPATH=src nice -n 10 python benchmarks/ddpm_table2.py --steps 1000 > table2.log 2>&1

Finished trainings and evaluations under --runs are reused on a rerun (delete a row's directory to
redo it); --tiny is a dry run of the whole pipeline in a minute (3 steps, 20 samples, 8 images).
Writes --json (default benchmarks/results/ddpm_table2.json) with the CPU model and a table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from _machine import cpu_info, cpu_model

ROOT = Path(__file__).resolve().parent.parent

# name, prediction, loss, variance, Table 2 label, paper FID, paper IS (None: "–", unstable to train)
ROWS = [  # run in this order: the rows the paper trained stably first
    ("eps_simple_fixed", "eps", "simple", "fixed_small", "ε prediction, ‖ε̃ − ε_θ‖² (L_simple)", 3.17, 9.46),
    ("eps_vlb_fixed", "eps", "vlb", "fixed_small", "ε prediction, L, fixed isotropic Σ", 13.51, 7.67),
    ("mean_vlb_fixed", "mean", "vlb", "fixed_small", "μ̃ prediction, L, fixed isotropic Σ", 13.22, 8.06),
    ("mean_mse_fixed", "mean", "simple", "fixed_small", "μ̃ prediction, ‖μ̃ − μ̃_θ‖²", None, None),
    ("mean_vlb_learned", "mean", "vlb", "learned", "μ̃ prediction, L, learned diagonal Σ", 23.69, 7.28),
    ("eps_vlb_learned", "eps", "vlb", "learned", "ε prediction, L, learned diagonal Σ", None, None),
]



THREADS: dict[str, str] = {}  # set from --threads: the children's OpenMP / MKL thread counts


def ddpmkit(args: list[str], log) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ddpmkit", *args]
    print("$ ddpmkit " + " ".join(args), file=log, flush=True)
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, **THREADS})
    log.write(res.stdout + res.stderr)
    log.flush()
    return res


def last_metrics(run_dir: Path) -> dict:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return {}
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    return json.loads(lines[-1]) if lines else {}


def train_row(row, run_dir: Path, a, log) -> dict:
    """Train one row unless a finished run (or a recorded divergence) is already there."""
    name, prediction, loss, variance = row[:4]
    status_file = run_dir / "table2_train.json"
    if status_file.exists():
        return json.loads(status_file.read_text())
    if (run_dir / "checkpoints" / f"step_{a.steps:08d}").is_dir():  # trained earlier by the same command
        import tomllib

        d = tomllib.loads((run_dir / "config.toml").read_text())["diffusion"]
        if (d["prediction"], d["loss"], d["variance"]) != (prediction, loss, variance):
            raise SystemExit(f"{run_dir} holds a run of another row: {d}")
        metrics = last_metrics(run_dir)
        info = {"status": "ok", "train_seconds": None, "last_logged_step": metrics.get("step"),
                "last_logged_loss": metrics.get("loss"), "message": "reused a finished run"}
        status_file.write_text(json.dumps(info, indent=2) + "\n")
        return info
    if run_dir.exists() and any(run_dir.iterdir()):
        raise SystemExit(f"{run_dir} holds an unfinished run not recorded by this script; remove it to rerun the row")
    sets = {"run.out_dir": f'"{run_dir}"', "diffusion.prediction": f'"{prediction}"',
            "diffusion.loss": f'"{loss}"', "diffusion.variance": f'"{variance}"',
            "diffusion.timestep_sampler": '"uniform"', "train.steps": str(a.steps),
            # the paper's training: no loss weighting, a constant learning rate (the demo config's
            # Min-SNR + cosine decay are a later recipe, not Table 2's)
            "diffusion.loss_weighting": '"none"', "train.lr_schedule": '"constant"',
            "train.checkpoint_every": "0", "train.sample_n": "16" if a.tiny else "100"}
    argv = ["train", "--config", str(a.config), "--no-progress"]
    for k, v in sets.items():
        argv += ["--set", f"{k}={v}"]
    tick = time.perf_counter()
    res = ddpmkit(argv, log)
    seconds = time.perf_counter() - tick
    metrics = last_metrics(run_dir)
    if res.returncode == 0:
        status = "ok"
    elif "training stopped" in res.stderr:
        status = "diverged"
    else:
        raise SystemExit(f"training {name} failed (exit {res.returncode}): {res.stderr.strip()[-400:]}")
    info = {"status": status, "train_seconds": seconds, "last_logged_step": metrics.get("step"),
            "last_logged_loss": metrics.get("loss"),
            "message": res.stderr.strip().splitlines()[-1] if res.stderr else ""}
    status_file.write_text(json.dumps(info, indent=2) + "\n")
    return info


def clip_args(prediction: str) -> list[str]:
    """DDPM's sampler clips the predicted x0 for eps models; for mu~ models it uses the network's mean
    as it is (its code, and improved-diffusion's PREVIOUS_X, clip only the reported x0), so mu~ rows
    are sampled with --no-clip: ddpmkit's clip would replace mu_theta by the posterior mean at the
    clipped x0."""
    return ["--no-clip"] if prediction == "mean" else []


def eval_row(run_dir: Path, a, log, prediction: str) -> dict:
    out = {}
    fid_json, nll_json = run_dir / "table2_fid.json", run_dir / "table2_nll.json"
    if not fid_json.exists():
        res = ddpmkit(["eval", "fid", "--checkpoint", str(run_dir), "--sampler", "ddpm", "-n", str(a.n),
                       *clip_args(prediction), "--seed", "0", "--no-progress", "--json", str(fid_json)], log)
        if res.returncode != 0:
            out["fid_error"] = res.stderr.strip().splitlines()[-1] if res.stderr else f"exit {res.returncode}"
    if fid_json.exists():
        d = json.loads(fid_json.read_text())
        out.update({k: d.get(k) for k in ("fid", "inception_score", "precision", "recall", "classes_covered",
                                          "sampling_seconds", "ref_n", "clip_x0")})
    if not nll_json.exists():
        res = ddpmkit(["eval", "nll", "--checkpoint", str(run_dir), "-n", str(a.nll_n), "--seed", "0",
                       "--no-progress", "--json", str(nll_json)], log)
        if res.returncode != 0:
            out["nll_error"] = res.stderr.strip().splitlines()[-1] if res.stderr else f"exit {res.returncode}"
    if nll_json.exists():
        d = json.loads(nll_json.read_text())
        out.update({k: d.get(k) for k in ("n", "total_bpd", "total_bpd_se", "prior_bpd", "kl_bpd", "decoder_bpd")})
    return out


def report_row(run_dir: Path) -> dict:
    """What a row's directory holds, without starting anything: a row whose training or evaluation
    has not finished is marked so."""
    if not (run_dir / "table2_train.json").exists():
        return {"status": "not trained" if not run_dir.exists() else "training unfinished"}
    info = json.loads((run_dir / "table2_train.json").read_text())
    if info["status"] != "ok":
        return info
    for what in ("fid", "nll"):
        path = run_dir / f"table2_{what}.json"
        if path.exists():
            d = json.loads(path.read_text())
            keys = (("fid", "inception_score", "precision", "recall", "classes_covered", "sampling_seconds", "ref_n",
                     "clip_x0")
                    if what == "fid" else ("n", "total_bpd", "total_bpd_se", "prior_bpd", "kl_bpd", "decoder_bpd"))
            info.update({k: d.get(k) for k in keys})
        else:
            info[f"{what}_missing"] = "not evaluated in the time available"
    return info


def fmt(x, spec: str) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def print_table(rows: list[dict]) -> None:
    print(f"| {'row (Ho et al. Table 2)':<40} | paper FID (IS) | status   | FID (n) | IS | NLL bits/dim | final loss |")
    print(f"|{'-' * 42}|----------------|----------|---------|----|--------------|------------|")
    for r in rows:
        paper = f"{r['paper_fid']} ({r['paper_is']})" if r["paper_fid"] is not None else "– (unstable)"
        nll = (f"{r['total_bpd']:.3f} ± {r['total_bpd_se']:.3f}" if r.get("total_bpd") is not None else "–")
        print(f"| {r['label']:<40} | {paper:<14} | {r['status']:<8} | {fmt(r.get('fid'), '.2f')} | "
              f"{fmt(r.get('inception_score'), '.2f')} | {nll} | {fmt(r.get('last_logged_loss'), '.4g')} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=2000, help="training steps per row (default: the demo's 2000)")
    ap.add_argument("--n", type=int, default=1000, help="FID samples per row (default 1000)")
    ap.add_argument("--nll-n", type=int, default=1000, help="test images for the bound (digits has 359)")
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "digits.toml")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "ddpm_table2", help="run directories")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "ddpm_table2.json")
    ap.add_argument("--rows", default=None, help="comma-separated row names (default: all six)")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads per ddpmkit process (1 wastes least on an oversubscribed machine)")
    ap.add_argument("--note", default="", help="what else ran on the machine (recorded in the JSON)")
    ap.add_argument("--tiny", action="store_true", help="dry run: 3 steps, 20 samples, 8 test images")
    ap.add_argument("--only", choices=["train", "eval", "report"], default=None,
                    help="one stage: 'train' trains the rows in turn; 'eval' evaluates each row once its "
                         "training has finished (waiting for it), so both can run side by side; 'report' "
                         "starts nothing and writes the JSON and table from what is there")
    a = ap.parse_args()
    if a.tiny:
        a.steps, a.n, a.nll_n = 3, 20, 8
    if a.threads:
        THREADS.update(OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    wanted = set(a.rows.split(",")) if a.rows else None
    rows = [r for r in ROWS if wanted is None or r[0] in wanted]
    if wanted is not None and len(rows) != len(wanted):
        raise SystemExit(f"unknown rows; valid: {', '.join(r[0] for r in ROWS)}")
    a.runs.mkdir(parents=True, exist_ok=True)
    results = []
    with open(a.runs / "table2.log", "a") as log:
        for row in rows:
            name = row[0]
            run_dir = (a.runs / name).resolve()
            if a.only == "report":
                info = report_row(run_dir)
            elif a.only == "eval":
                while not (run_dir / "table2_train.json").exists():
                    time.sleep(20)
                info = json.loads((run_dir / "table2_train.json").read_text())
            else:
                print(f"[{time.strftime('%H:%M:%S')}] {name}: training", flush=True)
                info = train_row(row, run_dir, a, log)
            if info["status"] == "ok" and a.only in (None, "eval"):
                print(f"[{time.strftime('%H:%M:%S')}] {name}: evaluating", flush=True)
                info = {**info, **eval_row(run_dir, a, log, row[1])}
            results.append({"row": name, "prediction": row[1], "loss": row[2], "variance": row[3],
                            "label": row[4], "paper_fid": row[5], "paper_is": row[6], **info})
            print(f"[{time.strftime('%H:%M:%S')}] {name}: {info['status']} fid={info.get('fid')} "
                  f"nll={info.get('total_bpd')}", flush=True)
    payload = {"benchmark": "ddpm_table2", "cpu_model": cpu_model(), "cpu": cpu_info(), "load_note": a.note,
               "config": str(a.config.relative_to(ROOT)) if a.config.is_relative_to(ROOT) else str(a.config),
               "train_steps": a.steps, "timestep_sampler": "uniform", "fid_n": a.n,
               "fid_sampler": "ddpm, 1000 steps; x0 clipped for eps rows, raw mu_theta for mu~ rows",
               "fid_features": "shipped digits classifier", "nll": "full bound, digits test split",
               "nll_n_requested": a.nll_n, "threads": a.threads, "tiny": a.tiny, "rows": results}
    if not a.tiny and a.only in (None, "report"):
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {a.json}")
    print_table(results)


if __name__ == "__main__":
    main()
