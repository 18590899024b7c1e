"""Quality per CPU-hour: train a config for a fixed wall-clock budget, then score its checkpoints.

Trains ``--config`` (with ``--set`` overrides) for ``--minutes`` of training wall time on ``--threads``
threads, saving a checkpoint every ``--every`` minutes of it (the trainer is asked to stop at each mark:
``Trainer.request_stop``, the same clean stop as Ctrl-C; the next stretch resumes from that checkpoint,
bit for bit as if it had not stopped).  Then every checkpoint's EMA weights are scored the way
``ddpmkit eval fid`` scores them -- the same library calls: ``--n`` samples per sampler (default
DPM-Solver++ 10 and 20 steps, DDIM 50) against the whole ``--ref-split`` split (Fashion-MNIST test:
10,000 images) in the shipped classifier's features: FID, precision / recall (k = 3), the fraction of
confident samples (p > 0.9) and the classes they cover.

    PYTHONPATH=src nice -n 10 python benchmarks/quality_per_hour.py --name baseline > qph.log 2>&1
    PYTHONPATH=src python benchmarks/quality_per_hour.py --name min-snr --set diffusion.loss_weighting=min_snr
    PYTHONPATH=src python benchmarks/quality_per_hour.py --name shipped --score pretrained:fashion-mnist

Two recipes run with the same seed, budget and threads are comparable side by side.  Only the training
stretches count against the budget (building the model, loading the data and each resume are outside
it; the checkpoint save at each mark is inside); the per-step checkpoints and sample grids of the config
are switched off (``train.checkpoint_every = 0``, ``train.sample_every = 0``).  A decaying learning rate
decays over ``train.steps``: set it (``--set train.steps=N``) to the steps the budget holds, or the
schedule is cut off where the budget ends.  Training stops early when it reaches ``train.steps``.

``--every-steps K`` makes the budget one of steps instead: train to ``train.steps`` with a checkpoint
every K steps, recording the wall time each took.  The machines this runs on drift in speed by up
to half within hours (other tenants; 123 vs 66 img/s on one CPU), so two recipes trained on
different afternoons compare fairly at equal steps, and the minutes column then says what each mark
cost on that afternoon.

A rerun with the same --runs/--name continues: finished stretches and evaluations are reused (the JSON
records the cumulative wall time); Ctrl-C or SIGTERM stops the whole benchmark at a checkpoint (a signal
ends the trainer's stretch cleanly; it is not taken for a budget mark), and the same command continues
that stretch with the budget that was left.  --tiny is a dry run of the whole pipeline in seconds (digits, the
tiny U-Net, T = 20, 2 x 1.2 s of training, 24 samples).  Writes --json (default
benchmarks/results/quality_per_hour_<name>.json; --tiny writes only an explicit --json).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
from pathlib import Path

from _machine import cpu_info, cpu_model

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SAMPLERS = "dpm++:10,dpm++:20,ddim:50"
TINY_SAMPLERS = "dpm++:3,ddim:4"


def parse_samplers(text: str) -> list[tuple[str, int]]:
    """``'dpm++:10,ddim:50'`` -> [('dpm++', 10), ('ddim', 50)]."""
    out = []
    for part in text.split(","):
        name, _, steps = part.strip().partition(":")
        if not name or not steps.isdigit() or int(steps) < 1:
            raise SystemExit(f"--samplers: expected NAME:STEPS[,NAME:STEPS...], got {part!r}")
        out.append((name, int(steps)))
    return out


def marks(minutes: float, every: float) -> list[float]:
    """Budget marks in minutes: every, 2 every, ..., and the budget itself (``marks(60, 15)`` = 15 .. 60)."""
    n = max(1, math.ceil(minutes / every - 1e-9))
    return [round(min(minutes, (i + 1) * every), 6) for i in range(n)]


def last_logged(run_dir: Path) -> dict:
    path = run_dir / "metrics.jsonl"
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []
    return json.loads(lines[-1]) if lines else {}


# --- training -------------------------------------------------------------------------------------

def train_for_budget(cfg, run_dir: Path, budget_marks: list[float], log, by: str = "minutes") -> list[dict]:
    """Train in stretches that end at each mark -- of cumulative training wall time (``by = "minutes"``) or
    of steps (``by = "steps"``); one record per mark: step, images seen, seconds, the checkpoint kept for
    it.  Reuses the records of an earlier run."""
    from ddpmkit.checkpoint import find_checkpoint
    from ddpmkit.training.trainer import Trainer

    record_file, config_file = run_dir / "qph_train.json", run_dir / "qph_config.json"
    partial_file = run_dir / "qph_partial.json"  # training seconds of a stretch cut short by Ctrl-C / SIGTERM
    records = json.loads(record_file.read_text()) if record_file.exists() else []
    partial = json.loads(partial_file.read_text()) if partial_file.exists() else None
    if not records and partial is None and (run_dir / "checkpoints").is_dir():
        raise SystemExit(f"{run_dir} holds a run not recorded by this script; remove it or pick another --name")
    if records and json.loads(config_file.read_text()) != cfg.to_dict():
        raise SystemExit(f"{run_dir} was trained with another config (see {config_file}); a recipe continues only "
                         "with the same --config and --set values: pick another --name")
    if records and ("step_mark" in records[0]) != (by == "steps"):
        raise SystemExit(f"{run_dir} was trained to marks of {'steps' if by == 'minutes' else 'minutes'}; "
                         "pick another --name")
    config_file.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    seconds = partial["train_seconds"] if partial else records[-1]["train_seconds"] if records else 0.0
    started = bool(records) or partial is not None
    for mark in budget_marks[len(records):]:
        if records and records[-1]["finished"]:
            break
        trainer = Trainer(cfg, resume=started, progress=False, log=log)
        at_mark = threading.Event()

        def stop_at_mark(trainer=trainer, at_mark=at_mark):
            at_mark.set()
            trainer.request_stop()

        timer = threading.Timer(max(mark * 60.0 - seconds, 0.0), stop_at_mark) if by == "minutes" else None
        max_steps = int(mark) - trainer.step if by == "steps" else None
        tick = time.perf_counter()
        if timer is not None:
            timer.start()
        try:
            result = trainer.train(max_steps, final_picture=False)
        finally:
            if timer is not None:
                timer.cancel()
        seconds += time.perf_counter() - tick
        started = True
        signalled = result.step < mark if by == "steps" else not at_mark.is_set() and result.step < cfg.train.steps
        if signalled:  # the trainer's clean stop on a signal
            partial_file.write_text(json.dumps({"train_seconds": seconds, "step": result.step}) + "\n")
            raise SystemExit(f"stopped at step {result.step}, {seconds:.1f} s into the budget (checkpoint saved); "
                             "the same command continues from there")
        partial_file.unlink(missing_ok=True)
        kept = find_checkpoint(run_dir)   # train.keep_checkpoints = 0: every mark's checkpoint stays
        row = last_logged(run_dir)
        record = {"minutes": mark if by == "minutes" else round(seconds / 60.0, 2), "step": result.step,
                  "images_seen": result.step * cfg.train.batch_size, "train_seconds": seconds,
                  "finished": result.step >= cfg.train.steps, "last_logged_loss": row.get("loss"),
                  "last_img_per_s": row.get("img_per_s"), "checkpoint": str(kept)}
        if by == "steps":
            record["step_mark"] = int(mark)
        records.append(record)
        record_file.write_text(json.dumps(records, indent=2) + "\n")
        print(f"[{time.strftime('%H:%M:%S')}] {record['minutes']:g} min: step {result.step}, {seconds:.1f} s of "
              "training", flush=True)
    return records


# --- evaluation -----------------------------------------------------------------------------------

class Scorer:
    """The ``eval fid`` pipeline, with the feature network and the reference statistics built once."""

    def __init__(self, cfg, a):
        from ddpmkit.evaluation.classifier import classifier_names
        from ddpmkit.evaluation.features import get_feature_extractor
        from ddpmkit.evaluation.reference import reference_features

        d = cfg.data
        kind = "classifier" if d.name in classifier_names() else "inception"
        self.extractor = get_feature_extractor(kind, d.name)
        self.ref = reference_features(self.extractor, d.name, data_dir=d.data_dir or None, split=a.ref_split,
                                      n=a.ref_n, seed=0, image_size=d.image_size or None,
                                      channels=d.channels or None, cache_dir=a.cache_dir)
        self.a = a

    def score(self, checkpoint: str, sampler: str, steps: int) -> dict:
        from ddpmkit.evaluation.fid import generate_for_fid, score_features
        from ddpmkit.runs import load_run

        run = load_run(checkpoint, device=self.a.device, use_ema=True, require_ema=True)
        steps = min(steps, run.process.num_timesteps)
        x, seconds = generate_for_fid(run, self.a.n, sampler=sampler, steps=steps, seed=self.a.seed, clip_x0=True,
                                      batch_size=self.a.batch_size, device=str(run.device))
        feats, logits = self.extractor(x)
        s = score_features(self.ref.features, feats, logits, real_stats=(self.ref.mu, self.ref.sigma), k=3,
                           num_classes=getattr(self.extractor, "num_classes", None))
        keep = ("fid", "precision", "recall", "confident_fraction", "confident_classes", "classes_covered",
                "mean_max_prob", "inception_score")
        return {"sampler": sampler, "steps": steps, "n": self.a.n, **{k: s.get(k) for k in keep},
                "sampling_seconds": seconds}


def evaluate(records: list[dict], cfg, a, samplers: list[tuple[str, int]], score_dir: Path | None = None) -> list[dict]:
    """Score every record's checkpoint with every sampler; each score is kept in a small JSON (in the
    checkpoint's directory, or ``score_dir``) and reused by a rerun."""
    scorer = None
    for r in records:
        r.setdefault("scores", {})
        for sampler, steps in samplers:
            key = f"{sampler}-{steps}"
            out = (score_dir or Path(r["checkpoint"])) / f"qph_{key}_n{a.n}_seed{a.seed}.json"
            if not out.exists():
                if scorer is None:
                    scorer = Scorer(cfg, a)
                print(f"[{time.strftime('%H:%M:%S')}] {fmt(r['minutes'], 'g')} min: {sampler} {steps} steps, "
                      f"n = {a.n}", flush=True)
                out.write_text(json.dumps(scorer.score(r["checkpoint"], sampler, steps), indent=2) + "\n")
            r["scores"][key] = json.loads(out.read_text())
    return records


# --- report ---------------------------------------------------------------------------------------

def fmt(x, spec: str) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def table(records: list[dict], samplers: list[tuple[str, int]]) -> str:
    head = "| minutes | step | images | " + " | ".join(f"{s} {n}: FID (P / R, conf, classes)" for s, n in samplers)
    lines = [head + " |", "|" + "---|" * (3 + len(samplers))]
    for r in records:
        cells = []
        for s, n in samplers:
            m = r["scores"].get(f"{s}-{n}", {})
            cells.append(f"{fmt(m.get('fid'), '.2f')} ({fmt(m.get('precision'), '.2f')} / "
                         f"{fmt(m.get('recall'), '.2f')}, {fmt(m.get('confident_fraction'), '.0%')}, "
                         f"{m.get('confident_classes', '–')})")
        lines.append(f"| {fmt(r['minutes'], 'g')} | {r['step']} | {fmt(r['images_seen'], 'd')} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "fashion-mnist.toml")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, as for ddpmkit train (repeatable)")
    ap.add_argument("--name", default="baseline", help="the recipe's name (its run directory and JSON)")
    ap.add_argument("--minutes", type=float, default=None, help="training wall-time budget (default 60)")
    ap.add_argument("--every", type=float, default=None, help="minutes between checkpoints (default 15)")
    ap.add_argument("--every-steps", type=int, default=None, metavar="K",
                    help="a budget of steps instead of minutes: train to train.steps with a checkpoint every K "
                         "steps, the wall time recorded (recipes compared at equal steps, whatever the machine's "
                         "speed that hour)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for training and sampling (default 2)")
    ap.add_argument("--n", type=int, default=None, help="samples per checkpoint and sampler (default 1000)")
    ap.add_argument("--samplers", default=None, help=f"NAME:STEPS list (default {DEFAULT_SAMPLERS})")
    ap.add_argument("--ref-split", default="test", choices=["train", "test"], help="reference split (default test)")
    ap.add_argument("--ref-n", type=int, default=None, help="reference images (default: the whole split)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (training uses run.seed)")
    ap.add_argument("--batch-size", type=int, default=250, help="samples per network batch")
    ap.add_argument("--device", default="auto", help="sampling device (training uses run.device)")
    ap.add_argument("--cache-dir", default=None, help="reference-statistics cache (default: as eval fid)")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "quality_per_hour", help="run directories")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--note", default="", help="what else ran on the machine (recorded in the JSON)")
    ap.add_argument("--only", choices=["train", "eval"], default=None, help="one stage (default: both)")
    ap.add_argument("--tiny", action="store_true", help="dry run in seconds: digits, tiny U-Net, T = 20")
    ap.add_argument("--score", default=None, metavar="CHECKPOINT",
                    help="train nothing: score this run, checkpoint or pretrained:NAME the same way (same samplers, "
                         "n, seed and reference), e.g. the shipped model a recipe has to beat")
    a = ap.parse_args(argv)
    by = "minutes" if a.every_steps is None else "steps"
    if by == "steps" and (a.minutes is not None or a.every is not None):
        raise SystemExit("--every-steps sets a budget of steps (train.steps): drop --minutes / --every")
    if by == "steps" and a.every_steps < 1:
        raise SystemExit("--every-steps must be >= 1")
    tiny_defaults = {"minutes": 0.04, "every": 0.02, "n": 24, "samplers": TINY_SAMPLERS, "ref_n": 100}
    defaults = {"minutes": 60.0, "every": 15.0, "n": 1000, "samplers": DEFAULT_SAMPLERS, "ref_n": None}
    for k, v in (tiny_defaults if a.tiny else defaults).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.minutes <= 0 or a.every <= 0 or a.n < 4 or a.threads < 1:
        raise SystemExit("--minutes and --every must be > 0, --n >= 4, --threads >= 1")
    samplers = parse_samplers(a.samplers)

    import torch

    from ddpmkit.config import load_config

    torch.set_num_threads(a.threads)
    run_dir = (a.runs / a.name).resolve()
    if a.score:
        return score_only(a, samplers, run_dir)
    sets = list(a.sets)
    if a.tiny:
        from ddpmkit.testing.tiny import tiny_overrides

        a.config = ROOT / "configs" / "digits.toml"
        sets = tiny_overrides(run_dir, 10**9) + sets
    sets += [f"run.out_dir={json.dumps(str(run_dir))}", f"run.threads={a.threads}", "train.checkpoint_every=0",
             "train.sample_every=0", "train.keep_checkpoints=0"]
    cfg = load_config(a.config, sets)
    budget = marks(a.minutes, a.every) if by == "minutes" else [int(m) for m in marks(cfg.train.steps, a.every_steps)]
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "qph.log", "a") as logf:
        def log(msg: str) -> None:
            print(msg, file=logf, flush=True)

        if a.only == "eval":
            record_file = run_dir / "qph_train.json"
            if not record_file.exists():
                raise SystemExit(f"{run_dir}: nothing trained yet (run without --only eval first)")
            records = json.loads(record_file.read_text())
        else:
            records = train_for_budget(cfg, run_dir, budget, log, by=by)
    if a.only != "train":
        records = evaluate(records, cfg, a, samplers)
    config_name = str(a.config.relative_to(ROOT)) if a.config.is_relative_to(ROOT) else str(a.config)
    payload = {"benchmark": "quality_per_hour", "name": a.name, "cpu_model": cpu_model(), "cpu": cpu_info(),
               "load_note": a.note, "config": config_name, "overrides": list(a.sets), "resolved_config": cfg.to_dict(),
               "budget_minutes": a.minutes if by == "minutes" else None,
               "every_minutes": a.every if by == "minutes" else None,
               **({"budget_steps": cfg.train.steps, "every_steps": a.every_steps} if by == "steps" else {}),
               "threads": a.threads,
               "fid_n": a.n, "fid_seed": a.seed, "ref_split": a.ref_split, "ref_n": a.ref_n,
               "features": "the shipped classifier of the dataset (Inception-v3 for others)", "weights": "EMA",
               "samplers": [{"sampler": s, "steps": n} for s, n in samplers], "tiny": a.tiny,
               "checkpoints": records}
    out = a.json if a.json is not None else (None if a.tiny else
                                             ROOT / "benchmarks" / "results" / f"quality_per_hour_{a.name}.json")
    if out is not None and a.only != "train":
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {out}")
    print(table(records, samplers) if a.only != "train" else "trained; evaluate with --only eval")
    return payload


def score_only(a, samplers: list[tuple[str, int]], run_dir: Path) -> dict:
    """``--score``: one record for an existing checkpoint, scored like a recipe's marks."""
    from ddpmkit.errors import UserError
    from ddpmkit.runs import load_run

    try:
        run = load_run(a.score, device="cpu", use_ema=True, require_ema=True)
    except UserError as e:
        raise SystemExit(f"--score: {e}") from None
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = run.checkpoint
    records = [{"minutes": None, "step": ckpt.step, "images_seen": None, "train_seconds": None,
                "checkpoint": a.score}]
    records = evaluate(records, run.config, a, samplers, score_dir=run_dir)
    payload = {"benchmark": "quality_per_hour", "name": a.name, "scored": a.score, "cpu_model": cpu_model(),
               "cpu": cpu_info(), "load_note": a.note, "resolved_config": run.config.to_dict(), "fid_n": a.n,
               "fid_seed": a.seed, "ref_split": a.ref_split, "ref_n": a.ref_n,
               "features": "the shipped classifier of the dataset (Inception-v3 for others)", "weights": "EMA",
               "samplers": [{"sampler": s, "steps": n} for s, n in samplers], "tiny": a.tiny, "checkpoints": records}
    out = a.json if a.json is not None else (None if a.tiny else
                                             ROOT / "benchmarks" / "results" / f"quality_per_hour_{a.name}.json")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {out}")
    print(table(records, samplers))
    return payload


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
