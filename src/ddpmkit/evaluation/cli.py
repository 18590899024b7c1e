"""``ddpmkit eval nll | fid | rate-distortion``: parse options, call the evaluation library, print a table."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..argtypes import PRECISION_HELP, PRECISIONS, positive_int, sampler_options
from ..errors import UserError


def _warn(msg: str) -> None:
    print(f"ddpmkit: warning: {msg}", file=sys.stderr)


def _load(args):
    from ..runs import load_run

    run = load_run(args.checkpoint, device=args.device, use_ema=not args.no_ema, require_ema=not args.no_ema)
    args.device = str(run.device)  # 'auto' resolved once, for every later step
    if args.no_ema and run.checkpoint.ema is not None:
        _warn("--no-ema: evaluating the raw weights although the checkpoint has EMA weights")
    return run


def _eval_data(run, split: str, n: int | None, seed: int, data_dir: str | None = None):
    """The run's dataset (same name, size and channels as in training), ``split``, a seeded subset of ``n``."""
    from ..data import load_dataset

    d = run.config.data
    try:
        data = load_dataset(d.name, data_dir=data_dir or d.data_dir or None, split=split,
                            image_size=d.image_size or None, channels=d.channels or None, n=n, seed=seed)
    except ValueError as e:
        raise UserError(str(e)) from None
    if data.kind != "image":
        raise UserError(f"bits/dim and rate-distortion need 8-bit image data; {d.name!r} holds continuous points")
    if tuple(data.shape) != run.item_shape:
        raise UserError(f"the data have items of shape {data.shape} but the model takes {run.item_shape}")
    return data


def _progress(args, total: int, desc: str):
    if args.no_progress:
        return None
    from tqdm import tqdm

    return lambda it: tqdm(it, total=total, desc=desc, leave=False, file=sys.stderr)


def _write_json(path: str | None, payload: dict) -> None:
    if path:
        p = Path(path)
        if p.parent != Path(""):
            p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {p}")


def _describe_run(args, run) -> dict:
    d = run.config.diffusion
    return {"checkpoint": str(args.checkpoint), "step": run.checkpoint.step, "ema": run.uses_ema,
            "dataset": run.config.data.name, "schedule": d.schedule, "timesteps": d.timesteps,
            "prediction": d.prediction, "variance": d.variance, "loss": d.loss}


# --- nll --------------------------------------------------------------------------------------

def _nll_terms(args):
    """The loaded run, its T and the per-term variational bound on the run's data (``args``' split/n)."""
    from ..runs import model_fn_of
    from .likelihood import dataset_batches, evaluate_nll

    run = _load(args)
    data = _eval_data(run, args.split, args.n, args.seed, args.data_dir)
    T = run.process.num_timesteps
    batches = dataset_batches(data, None, args.batch_size, with_labels=run.num_classes is not None)
    res = evaluate_nll(model_fn_of(run.model), run.process, batches, seed=args.seed, device=args.device,
                       progress=_progress(args, T, "t"))
    return run, T, res


def cmd_nll(args) -> int:
    run, T, res = _nll_terms(args)
    s = res.summary()
    info = _describe_run(args, run)
    print(f"bits/dim of the variational bound: {info['dataset']} {args.split} split, n = {res.n}, T = {T}, "
          f"{info['variance']} variance, {'EMA' if run.uses_ema else 'raw'} weights (step {info['step']})")
    print(f"  {'term':<24}{'bits/dim':>10}{'± s.e.':>10}")
    for key, label in (("total", "total (NLL bound)"), ("prior", "prior L_T"), ("kl", "sum of KL terms t>=1"),
                       ("decoder", "decoder L_0")):
        print(f"  {label:<24}{s[key + '_bpd']:>10.4f}{s[key + '_bpd_se']:>10.4f}")
    for q in s["quarters"]:
        label = f"  KL t={max(q['t_from'], 1)}..{q['t_to']}"
        print(f"{label:<26}{q['bpd']:>10.4f}")
    _write_json(args.json, {**info, "split": args.split, "seed": args.seed, **res.to_dict(per_t=True)})
    return 0


# --- fid --------------------------------------------------------------------------------------

def cmd_fid(args) -> int:
    from ..samplers import default_steps
    from .classifier import classifier_names
    from .features import get_feature_extractor
    from .fid import generate_for_fid, real_scores, sample_count_warning, score_features
    from .reference import reference_features

    run = _load(args)
    dataset = run.config.data.name
    shape = run.item_shape
    kind = args.features or ("classifier" if (args.classifier or dataset) in classifier_names() else "inception")
    extractor = get_feature_extractor(kind, dataset, classifier=args.classifier,
                                      inception_weights=args.inception_weights, resize=args.resize)
    extractor.check(shape)  # mismatches fail before any sampling
    if args.n < 2 or args.n <= args.k:
        raise UserError(f"-n {args.n} is too few samples: FID needs a covariance and precision/recall k = {args.k} "
                        "neighbours")
    warning = sample_count_warning(args.n, extractor.feature_dim)
    if warning:
        _warn(warning)
    d = run.config.data
    ref = reference_features(extractor, dataset, data_dir=args.data_dir or d.data_dir or None, split=args.ref_split,
                             n=args.ref_n, seed=0, image_size=d.image_size or None, channels=d.channels or None,
                             cache_dir=args.cache_dir, use_cache=not args.no_cache)
    print(f"reference: {dataset} {args.ref_split} split, n = {len(ref.features)}, features {extractor.name} "
          f"({extractor.feature_dim}-d){' [cached]' if ref.cached else ''}"
          + (f" -> {ref.path}" if ref.path else ""))
    ref_warning = sample_count_warning(len(ref.features), extractor.feature_dim, what="reference")
    if ref_warning:
        _warn(ref_warning)
    steps = args.steps or default_steps(args.sampler, run.process.num_timesteps)
    x, seconds = generate_for_fid(run, args.n, sampler=args.sampler, steps=steps, seed=args.seed,
                                  guidance=args.guidance, clip_x0=not args.no_clip, spacing=args.spacing,
                                  batch_size=args.batch_size, progress=not args.no_progress, device=args.device,
                                  precision=args.precision, **sampler_options(args))
    if args.save_samples:
        from .. import viz

        viz.save_grid(x[:100], args.save_samples)
        print(f"wrote {args.save_samples} (first {min(100, len(x))} samples)")
    feats, logits = extractor(x)
    scores = score_features(ref.features, feats, logits, real_stats=(ref.mu, ref.sigma), k=args.k,
                            num_classes=getattr(extractor, "num_classes", None))
    scores.update(real_scores(ref, getattr(extractor, "num_classes", None)))
    steps_used = steps
    eta = sampler_options(args).get("eta", 0.0) if args.sampler == "ddim" else None
    info = {**_describe_run(args, run), "sampler": args.sampler, "steps": steps_used, "eta": eta,
            "spacing": args.spacing or "default", "clip_x0": not args.no_clip, "seed": args.seed, "n": args.n,
            "features": extractor.name, "feature_dim": extractor.feature_dim,
            "ref_split": args.ref_split, "ref_n": len(ref.features), "sampling_seconds": seconds,
            "seconds_per_image": seconds / args.n, "warning": warning}
    print(f"{args.sampler} {steps_used} steps"
          + (f", eta {eta}" if args.sampler == "ddim" else "")
          + (f", {args.spacing} spacing" if args.spacing else "") + (", x0 not clipped" if args.no_clip else "")
          + f": n = {args.n}, {seconds / args.n * 1000:.1f} ms/image")
    print(f"  FID        {scores['fid']:.3f}")
    print(f"  precision  {scores['precision']:.3f}   recall {scores['recall']:.3f}   (k = {args.k})")
    if "inception_score" in scores:
        print(f"  IS         {scores['inception_score']:.3f} ± {scores['inception_score_std']:.3f}   "
              f"(real {scores.get('real_inception_score', float('nan')):.3f})")
        print(f"  classes    {scores['classes_covered']}/{scores['num_classes']} covered, mean max-prob "
              f"{scores['mean_max_prob']:.3f} (real {scores.get('real_mean_max_prob', float('nan')):.3f}); "
              f"{scores['confident_fraction']:.0%} confident (p > 0.9; real "
              f"{scores.get('real_confident_fraction', float('nan')):.0%}), in {scores['confident_classes']} classes")
    _write_json(args.json, {**info, **scores})
    return 0


# --- rate-distortion --------------------------------------------------------------------------

def cmd_rate_distortion(args) -> int:
    from .. import viz
    from ..runs import generate
    from .rate_distortion import progressive_steps, rate_distortion_from_terms, table_rows, write_rate_distortion

    run, T, res = _nll_terms(args)
    rd = rate_distortion_from_terms(res.vb_mean, float(res.prior.mean()), res.x0_mse_mean)
    summary = res.summary()
    meta = {**_describe_run(args, run), "split": args.split, "seed": args.seed,
            **{k: v for k, v in summary.items() if k != "quarters"}}
    paths = write_rate_distortion(rd, args.out, meta=meta)
    print(f"rate-distortion: {meta['dataset']} {args.split} split, n = {res.n}, T = {T}")
    print(f"  {'t':>6}{'rate (bits/dim)':>18}{'distortion (RMSE 0-255)':>26}")
    for t, r, dist in table_rows(rd, args.rows):
        print(f"  {t:>6}{r:>18.4f}{dist:>26.3f}")
    print(f"  lossless: rate(0) {rd['rate'][0]:.4f} + decoder {meta['decoder_bpd']:.4f} = {meta['total_bpd']:.4f} "
          "bits/dim")
    for p in paths.values():
        print(f"wrote {p}")
    if run.is_image and args.columns > 0:
        cols = progressive_steps(T, args.columns)
        rec = viz.TrajectoryRecorder(cols, max_samples=args.trajectory_n)
        y = run.balanced_labels(args.trajectory_n)
        generate(run.model, run.process, args.trajectory_n, run.item_shape, sampler="ddpm", steps=None,
                 seed=args.seed, callback=rec, device=args.device, progress=not args.no_progress, y=y)
        fig = Path(args.out) / "progressive_generation.png"
        viz.save_trajectory(rec.snapshots, fig, max_samples=args.trajectory_n,
                            title="progressive generation: x_t and predicted x0 (DDPM ancestral)")
        print(f"wrote {fig} (x_t and predicted x0 at t = {', '.join(str(s[0]) for s in rec.snapshots)})")
    return 0


# --- parser -----------------------------------------------------------------------------------

def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True,
                   help="run directory, checkpoint directory, pretrained:NAME or a diffusers pipeline directory")
    p.add_argument("--no-ema", action="store_true",
                   help="use the raw weights (needed for checkpoints without EMA weights)")
    p.add_argument("--data-dir", default=None, help="data directory (default: the run's data.data_dir)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available, default), cpu or cuda[:N]")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _real_data_args(p: argparse.ArgumentParser, n_default: int, seed_help: str) -> None:
    """The options of the commands that read real images: split, a seeded subset, batch size."""
    p.add_argument("--split", default="test", choices=["train", "test"], help="data split (default test)")
    p.add_argument("-n", type=positive_int, default=n_default,
                   help=f"images (a seeded subset; default {n_default})")
    p.add_argument("--batch-size", type=positive_int, default=100, help="images per batch")
    p.add_argument("--seed", type=int, default=0, help=seed_help)


def add_eval_parser(sub) -> None:
    from ..samplers import SAMPLERS, SPACINGS

    e = sub.add_parser("eval", help="evaluate a checkpoint: bits/dim, FID, rate-distortion",
                       description="Evaluate a checkpoint: `eval nll` (bits/dim of the variational bound), "
                                   "`eval fid` (FID, precision/recall, Inception Score, class coverage), "
                                   "`eval rate-distortion` (DDPM Sec. 4.3).")
    esub = e.add_subparsers(dest="eval_command", metavar="WHAT", required=True)

    n = esub.add_parser("nll", help="bits/dim of the full variational bound, with its breakdown",
                        description="Bits/dim of prior + sum of KL terms + decoder NLL on real data, mean ± "
                                    "standard error over images. Costs T network evaluations per image.")
    _common(n)
    _real_data_args(n, 1000, "seeds the subset and the noise")
    n.add_argument("--json", default=None, help="write the results (with per-t terms) to this JSON file")
    n.set_defaults(func=cmd_nll)

    f = esub.add_parser("fid", help="FID, precision/recall, Inception Score and class coverage of samples",
                        description="Generate -n samples and compare their features with real reference features "
                                    "(cached). Classifier features for fashion-mnist/digits, Inception-v3 for RGB.")
    _common(f)
    f.add_argument("--sampler", choices=list(SAMPLERS), default="ddim", help="sampler (default ddim)")
    f.add_argument("--steps", type=positive_int, default=None,
                   help="steps (default: all T for ddpm, min(50, T) otherwise)")
    f.add_argument("--eta", type=float, default=None, help="DDIM eta (default 0; only for --sampler ddim)")
    f.add_argument("--spacing", choices=list(SPACINGS), default=None,
                   help="time steps a sampler visits (default: the sampler's own, uniform for ddpm/ddim)")
    f.add_argument("--no-clip", action="store_true", help="do not clip the predicted x0 to [-1, 1]")
    f.add_argument("--precision", choices=list(PRECISIONS), default="fp32", help=PRECISION_HELP)
    f.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    f.add_argument("-n", type=int, default=10000, help="generated samples (default 10000)")
    f.add_argument("--seed", type=int, default=0, help="sampling seed")
    f.add_argument("--batch-size", type=positive_int, default=256, help="samples per network batch")
    f.add_argument("--features", choices=["classifier", "inception"], default=None,
                   help="feature network (default: classifier for fashion-mnist/digits, else inception)")
    f.add_argument("--classifier", default=None, help="use another dataset's classifier (default: the run's)")
    f.add_argument("--inception-weights", default=None, help="local Inception-v3 FID weights file (.pth)")
    f.add_argument("--resize", action="store_true",
                   help="resize real and generated images alike to the classifier's input size")
    f.add_argument("--ref-split", default="test", choices=["train", "test"], help="reference split (default test)")
    f.add_argument("--ref-n", type=positive_int, default=None, help="reference images (default: the whole split)")
    f.add_argument("-k", "--k", type=positive_int, default=3, help="neighbours for precision/recall (default 3)")
    f.add_argument("--cache-dir", default=None, help="reference-statistics cache (default: beside the data, else "
                                                     "~/.cache/ddpmkit)")
    f.add_argument("--no-cache", action="store_true", help="recompute the reference features")
    f.add_argument("--save-samples", default=None, help="also save a grid of the first 100 samples (PNG)")
    f.add_argument("--json", default=None, help="write the results to this JSON file")
    f.set_defaults(func=cmd_fid)

    r = esub.add_parser("rate-distortion", help="rate (bits/dim) vs distortion (RMSE) along the reverse process",
                        description="For each t: cumulative rate prior + KL terms above t, distortion = RMSE of the "
                                    "predicted x0 on [0, 255] (DDPM Table 4, Fig. 5); CSV, JSON, plot, and the "
                                    "progressive-generation figure.")
    _common(r)
    _real_data_args(r, 100, "seeds the subset, the noise and the trajectory")
    r.add_argument("--out", required=True, help="output directory")
    r.add_argument("--rows", type=positive_int, default=11, help="rows of the printed table")
    r.add_argument("--columns", type=int, default=6, help="columns of the progressive-generation figure (0: none)")
    r.add_argument("--trajectory-n", type=positive_int, default=4, help="samples in the progressive figure")
    r.set_defaults(func=cmd_rate_distortion)
