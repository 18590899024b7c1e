"""``ddpmkit`` command line: parses options and calls the library; nothing else lives here."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from . import __version__
from .argtypes import PRECISION_HELP, PRECISIONS, int_list, positive_int, sampler_options
from .errors import TrainingDiverged, UserError

EPILOG = "Run `ddpmkit COMMAND --help` for the options of each command."


# --- commands -------------------------------------------------------------------------------

def cmd_train(args) -> int:
    from .training.trainer import train, train_config

    cfg = train_config(args.config, args.set, args.resume)
    result = train(cfg, resume=bool(args.resume), progress=not args.no_progress, max_steps=args.max_steps)
    if not result.main_process:  # under torchrun only rank 0 reports
        return 0
    if result.stopped_early:
        print(f"stopped at step {result.step}; resume with: ddpmkit train --resume {result.run_dir}"
              + "".join(f" --set {s}" for s in args.set))
    else:
        print(f"finished {result.step} steps in {result.run_dir}")
    return 0


def _write_samples(x, data_kind: str, out: Path, reference=None) -> None:
    from . import viz

    if data_kind == "image":
        viz.save_grid(x, out)
    else:
        viz.plot_points(x.numpy(), out, reference=reference)


def cmd_sample(args) -> int:
    import numpy as np

    from . import viz
    from .runs import generate, load_run
    from .samplers import default_steps

    run = load_run(args.checkpoint, device=args.device, use_ema=not args.no_ema)
    if args.trajectory and not run.is_image:
        raise UserError("--trajectory draws images; this model generates points")
    recorder = None
    if args.trajectory:
        recorder = viz.TrajectoryRecorder(args.trajectory, max_samples=args.trajectory_n)
    steps = args.steps or default_steps(args.sampler, run.process.num_timesteps)
    x = generate(run.model, run.process, args.n, run.item_shape, sampler=args.sampler, steps=steps,
                 seed=args.seed, y=args.class_label, guidance=args.guidance, clip_x0=False if args.no_clip else None,
                 spacing=args.spacing, batch_size=args.batch_size, callback=recorder,
                 progress=not args.no_progress, precision=args.precision, **sampler_options(args))
    out = Path(args.out)
    _write_samples(x, "image" if run.is_image else "points", out)
    print(f"wrote {out} ({args.n} samples, sampler {args.sampler}, steps {steps})")
    if args.npy:
        np.save(args.npy, x.numpy())
        print(f"wrote {args.npy} (float32 in [-1, 1], shape {tuple(x.shape)})")
    if recorder is not None:
        traj_out = Path(args.trajectory_out or out.with_name(out.stem + "_trajectory.png"))
        shown = min(args.trajectory_n, args.n, args.batch_size)  # the recorder sees one batch at a time
        if shown < args.trajectory_n:
            print(f"--trajectory-n {args.trajectory_n}: showing {shown} (-n {args.n}, --batch-size {args.batch_size})")
        snaps = [(t, xt[:shown], x0[:shown]) for t, xt, x0 in recorder.snapshots]
        viz.save_trajectory(snaps, traj_out, max_samples=shown)
        print(f"wrote {traj_out} (x_t and predicted x0 at t = {', '.join(str(s[0]) for s in snaps)})")
    return 0


def cmd_forward(args) -> int:
    import torch

    from . import viz
    from .data import DataError, read_image_array, to_model_range
    from .diffusion import GaussianDiffusion

    if args.checkpoint:
        from .runs import load_run

        process = load_run(args.checkpoint).process
    else:
        try:
            process = GaussianDiffusion.from_schedule(args.schedule, args.timesteps)
        except ValueError as e:
            raise UserError(str(e)) from None
    if args.image:
        try:
            arr = read_image_array(args.image)
        except DataError as e:
            raise UserError(str(e)) from None
        x0 = to_model_range(torch.from_numpy(arr))
    else:
        from .config import config_from_dict
        from .runs import load_run
        from .training.trainer import load_training_data

        if not args.checkpoint:
            raise UserError("give --image FILE, or --checkpoint RUN to use the run's first training image")
        data = load_training_data(config_from_dict(load_run(args.checkpoint).checkpoint.config))
        if data.kind != "image":
            raise UserError("this run's data are points, not images; pass --image FILE")
        if args.index >= len(data):
            raise UserError(f"--index {args.index}: the run's training set has {len(data)} images")
        x0 = data.batch(torch.tensor([args.index]))[0][0]
    steps = args.steps or None
    T = process.num_timesteps
    if steps is not None and any(s < 0 or s >= T for s in steps):
        raise UserError(f"--steps must lie in 0..{T - 1}")
    out = Path(args.out)
    viz.save_forward_strip(process, x0, out, steps=steps, generator=torch.Generator().manual_seed(args.seed))
    print(f"wrote {out}")
    return 0


def cmd_info(args) -> int:
    from .runs import load_run

    run = load_run(args.run)
    ckpt = run.checkpoint
    n_params = sum(p.numel() for p in run.model.parameters())
    info = {"checkpoint": str(ckpt.path), "step": ckpt.step, "parameters": n_params, "ema": ckpt.ema is not None,
            "config": ckpt.config, "network": ckpt.network}
    metrics = Path(ckpt.path).parents[1] / "metrics.jsonl"
    if metrics.is_file():
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        info["last_losses"] = [{"step": r["step"], "loss": r["loss"]} for r in rows[-5:]]
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    c = ckpt.config
    print(f"checkpoint   {ckpt.path}")
    print(f"step         {ckpt.step}")
    print(f"parameters   {n_params:,} ({ckpt.network.get('kind')}, preset {c['model']['preset']})")
    print(f"data         {c['data']['name']}" + (" (class-conditional)" if c["data"]["class_conditional"] else ""))
    d = c["diffusion"]
    print(f"diffusion    {d['schedule']} T={d['timesteps']} prediction={d['prediction']} "
          f"variance={d['variance']} loss={d['loss']}")
    print(f"EMA weights  {'yes' if ckpt.ema is not None else 'no'}")
    for r in info.get("last_losses", []):
        print(f"  step {r['step']:>8}  loss {r['loss']:.5f}")
    return 0


def cmd_export(args) -> int:
    from .checkpoint import export_checkpoint
    from .runs import resolve_checkpoint_path

    if args.diffusers:
        return export_diffusers(args)
    out = export_checkpoint(resolve_checkpoint_path(args.run), args.out, use_ema=not args.raw, force=args.force)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote {out} ({size / 2**20:.1f} MiB, {'raw' if args.raw else 'EMA'} weights only)")
    return 0


def export_diffusers(args) -> int:
    from .diffusers_pipeline import write_diffusers_pipeline
    from .runs import load_run

    run = load_run(args.run, use_ema=not args.raw, require_ema=not args.raw)
    out = write_diffusers_pipeline(run.model, run.process, args.out, force=args.force)
    print(f"wrote {out} (diffusers DDPMPipeline: unet/, scheduler/, model_index.json; "
          f"{'raw' if args.raw else 'EMA'} weights)")
    return 0


def cmd_plot(args) -> int:
    from . import viz

    out = Path(args.out)
    if args.what == "loss":
        if not args.run:
            raise UserError("plot loss needs the run directory")
        metrics = Path(args.run) / "metrics.jsonl"
        if not metrics.is_file():
            raise UserError(f"no metrics.jsonl in {args.run}")
        viz.plot_loss_curve(metrics, out)
    elif args.what == "schedules":
        viz.plot_schedules(out, T=args.timesteps)
    print(f"wrote {out}")
    return 0


def cmd_configs(args) -> int:
    import shutil

    from .config import shipped_configs

    shipped = shipped_configs()
    if args.name is None:
        for name, path in shipped.items():
            lines = path.read_text().splitlines()
            print(f"{name:<16} {lines[0].lstrip('# ') if lines and lines[0].startswith('#') else ''}")
        print("use one by name (--config digits) or copy it: ddpmkit configs NAME --out FILE")
        return 0
    name = args.name[:-len(".toml")] if args.name.endswith(".toml") else args.name
    if name not in shipped:
        raise UserError(f"no shipped config {args.name!r}; shipped: {', '.join(shipped)}")
    if args.out is None:
        sys.stdout.write(shipped[name].read_text())
        return 0
    out = Path(args.out)
    if out.exists():
        raise UserError(f"{out} exists; not overwriting it")
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shipped[name], out)
    print(f"wrote {out} (a copy of the shipped {name} config)")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), config=args.config, steps=args.steps, progress=not args.no_progress)
    return 0


def cmd_cpu_profile(args) -> int:
    from .networks import cpu_fast
    from .networks.cpu_profile import DEFAULT_CASES, profile_cpu_paths

    found = profile_cpu_paths(args.case or DEFAULT_CASES, repeats=args.repeats, threads=args.threads,
                              save=not args.dry_run)
    print(f"noise (A/A control): {found['noise']:.1%}; kept: {', '.join(found['kept']) or 'none'}")
    if found["path"]:
        print(f"wrote the profile for {found['profile_key']} to {found['path']} (DDPMKIT_CPU_FAST=auto reads it; "
              f"{cpu_fast.ENV}=none|all|NAME,NAME overrides it)")
    else:
        print("--dry-run: nothing written")
    return 0


def case_spec(text: str) -> tuple[str, int]:
    """``PRESET:BATCH`` -> (preset, batch), for ``cpu-profile --case``."""
    preset, _, batch = text.partition(":")
    if not preset or not batch.isdigit() or int(batch) < 1:
        raise argparse.ArgumentTypeError(f"expected PRESET:BATCH (e.g. fashion-mnist:32), got {text!r}")
    return preset, int(batch)


# --- parser ---------------------------------------------------------------------------------

class Parser(argparse.ArgumentParser):
    """argparse with the CLI's one-line errors (``ddpmkit: error: ...``, exit 2) instead of usage + message."""

    def error(self, message: str):
        print(f"ddpmkit: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    from .coding.cli import add_coding_parsers
    from .data.cli import add_data_parser
    from .evaluation.cli import add_eval_parser
    from .samplers import SAMPLERS, SPACINGS

    p = Parser(
        prog="ddpmkit", epilog=EPILOG,
        description="Train and sample denoising diffusion probabilistic models (DDPM, Improved DDPM, DDIM, "
                    "DPM-Solver++).")
    p.add_argument("--version", action="version", version=f"ddpmkit {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    t = sub.add_parser("train", help="train a model from a TOML config",
                       description="Train a model. Runs single-process, or data-parallel under "
                                   "`torchrun --nproc_per_node N -m ddpmkit train ...` (gloo on CPU, NCCL on CUDA).")
    t.add_argument("--config", default=None,
                   help="TOML config file, or a shipped config by name (digits, toy2d, ...; see `ddpmkit configs`); "
                        "with --resume RUN_DIR the default is the run's own")
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (TOML literal), e.g. --set train.lr=1e-4; repeatable")
    t.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
                   help="continue from the latest checkpoint in run.out_dir (or in RUN_DIR); [train] settings may "
                        "change, [diffusion], [model] and [data] must match the checkpoint")
    t.add_argument("--max-steps", type=positive_int, default=None,
                   help="train at most this many more steps in this invocation (the run's end stays train.steps)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="generate samples from a checkpoint",
                       description="Generate samples with any sampler and write an image grid (10x10 for 100 "
                                   "images) or, for 2-D models, a scatter plot.")
    s.add_argument("--checkpoint", required=True,
                   help="run directory, checkpoint directory, pretrained:NAME, or a diffusers DDPM pipeline "
                        "directory (diffusers:DIR, or any DIR with a model_index.json)")
    s.add_argument("--sampler", choices=list(SAMPLERS), default="ddim",
                   help="ddpm (ancestral, respaced when --steps < T), ddim, dpm++ (DPM-Solver++ 2M) or heun")
    s.add_argument("--steps", type=positive_int, default=None,
                   help="time steps to visit (default: all T for ddpm, min(50, T) otherwise)")
    s.add_argument("--eta", type=float, default=None,
                   help="DDIM eta: 0 deterministic (default), 1 DDPM-like noise; only for --sampler ddim")
    s.add_argument("--spacing", choices=list(SPACINGS), default=None,
                   help="time steps a sampler visits when --steps < T (default: the sampler's own: uniform "
                        "for ddpm/ddim, logsnr for dpm++, karras for heun)")
    s.add_argument("-n", type=positive_int, default=100, help="number of samples (default 100)")
    s.add_argument("--seed", type=int, default=0, help="random seed; same seed, same samples")
    s.add_argument("--class", dest="class_label", type=int, default=None, help="class label (conditional models)")
    s.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale w (eps = eps_null + w (eps_y - eps_null)); 1 = plain "
                        "conditional")
    s.add_argument("--out", required=True, help="output PNG")
    s.add_argument("--npy", default=None, help="also save the samples as a .npy array in [-1, 1]")
    s.add_argument("--trajectory", type=int_list, default=None, metavar="T1,T2,...",
                   help="also draw x_t and the predicted x0 at these time indices, e.g. 999,750,500,250,0")
    s.add_argument("--trajectory-out", default=None, help="trajectory PNG (default: OUT_trajectory.png)")
    s.add_argument("--trajectory-n", type=positive_int, default=8,
                   help="samples shown in the trajectory (default 8; at most -n and --batch-size)")
    s.add_argument("--batch-size", type=positive_int, default=256, help="samples per network batch")
    s.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    s.add_argument("--no-clip", action="store_true",
                   help="do not clip the predicted x0 to [-1, 1] (points are never clipped)")
    s.add_argument("--device", default="auto", help="auto (CUDA when available, default), cpu or cuda[:N]")
    s.add_argument("--precision", choices=list(PRECISIONS), default="fp32", help=PRECISION_HELP)
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_sample)

    f = sub.add_parser("forward", help="draw the forward diffusion of an image",
                       description="Draw x_t = q_sample(x0, t) for an image at several t (a forward-diffusion strip).")
    f.add_argument("--image", default=None, help="PNG/JPEG to diffuse")
    f.add_argument("--checkpoint", default=None,
                   help="take the process (and, without --image, the first training image) from this run")
    f.add_argument("--index", type=int, default=0, help="training image index when no --image is given")
    f.add_argument("--steps", type=int_list, default=None, metavar="T1,T2,...",
                   help="time indices to show (default: 0 and evenly spaced up to T-1)")
    f.add_argument("--schedule", default="linear", help="beta schedule without --checkpoint (default linear)")
    f.add_argument("--timesteps", type=positive_int, default=1000, help="T without --checkpoint (default 1000)")
    f.add_argument("--seed", type=int, default=0, help="noise seed")
    f.add_argument("--out", required=True, help="output PNG")
    f.set_defaults(func=cmd_forward)

    i = sub.add_parser("info", help="describe a run or checkpoint",
                       description="Config, step, parameter count, data and last losses of a run.")
    i.add_argument("run", help="run directory, checkpoint directory or pretrained:NAME")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(func=cmd_info)

    x = sub.add_parser("export", help="write a slim inference-only copy of a checkpoint",
                       description="Copy one set of weights (EMA by default) and the run's config into OUT, without "
                                   "the optimizer state: what `--checkpoint OUT` needs for sample and eval.")
    x.add_argument("run", help="run directory or checkpoint directory")
    x.add_argument("--out", required=True, help="output directory (must not exist or be empty, unless --force)")
    x.add_argument("--raw", action="store_true", help="export the raw weights instead of the EMA weights")
    x.add_argument("--force", action="store_true", help="replace OUT if it holds an earlier export of the same kind "
                   "(never anything else)")
    x.add_argument("--diffusers", action="store_true",
                   help="write OUT as a diffusers DDPMPipeline directory (unet/, scheduler/, model_index.json) "
                        "that diffusers.DDPMPipeline.from_pretrained(OUT) loads")
    x.set_defaults(func=cmd_export)

    pl = sub.add_parser("plot", help="plots: loss curve of a run, schedules",
                        description="`plot loss RUN --out loss.png` draws metrics.jsonl; `plot schedules --out "
                                    "s.png` draws alpha_bar and log-SNR of linear vs cosine.")
    plots = pl.add_subparsers(dest="what", metavar="WHAT", required=True)
    pll = plots.add_parser("loss", help="loss curve of a run",
                           description="Loss against step (raw and smoothed, log scale), the loss per quarter of t "
                                       "and the learning rate, from RUN/metrics.jsonl.")
    pll.add_argument("run", help="run directory")
    pll.add_argument("--out", required=True, help="output PNG")
    pls = plots.add_parser("schedules", help="linear vs cosine schedules",
                           description="alpha_bar and log-SNR of the linear and cosine schedules against t.")
    pls.add_argument("--out", required=True, help="output PNG")
    pls.add_argument("--timesteps", type=positive_int, default=1000, help="T (default 1000)")
    pl.set_defaults(func=cmd_plot, run=None, timesteps=1000)

    d = sub.add_parser("demo", help="train the digits demo and write pictures",
                       description="Train configs/digits.toml (about 5 minutes on 2 CPU cores), then write "
                                   "samples.png, trajectory.png, forward.png and loss.png.")
    d.add_argument("--out", default="demo", help="output directory (default demo/)")
    d.add_argument("--config", default=None, help="config file or shipped name (default: the shipped digits config)")
    d.add_argument("--steps", type=positive_int, default=None, help="override train.steps")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    d.set_defaults(func=cmd_demo)

    c = sub.add_parser("configs", help="list the shipped configs, print or copy one",
                       description="The configs that come with ddpmkit (package data). `--config NAME` uses one by "
                                   "name anywhere; `ddpmkit configs NAME --out FILE` copies it to edit.")
    c.add_argument("name", nargs="?", default=None, help="config to print (or copy with --out)")
    c.add_argument("--out", default=None, help="write a copy here (never overwrites)")
    c.set_defaults(func=cmd_configs)

    cp = sub.add_parser(
        "cpu-profile", help="measure which CPU speed paths pay on this machine and cache the choice",
        description="Time whole U-Net training steps and forwards of the benchmark presets with each CPU speed "
                    "path (conv_weight_grad, groupnorm_sums, dropout_bits, upsample_transposed) on alone against "
                    "torch's own ops, interleaved, with an A/A control for the noise; keep a path that makes some "
                    "step >= 3 % faster and none > 2 % slower (both bounds raised to the noise), and write the "
                    "choice to cpu_fast.json in the user cache ($DDPMKIT_CACHE_DIR, else $XDG_CACHE_HOME/ddpmkit, else "
                    "~/.cache/ddpmkit), keyed by CPU model and torch "
                    "version, where DDPMKIT_CPU_FAST=auto (the default) finds it. About 5 minutes on 2 cores with "
                    "the default cases; run it on an otherwise idle machine. Without a profile every layer runs "
                    "torch's op.")
    cp.add_argument("--case", action="append", type=case_spec, default=None, metavar="PRESET:BATCH",
                    help="a U-Net preset and batch to time (repeatable; default ddpm-cifar10:8, fashion-mnist:32, "
                         "fashion-mnist:128)")
    cp.add_argument("--repeats", type=positive_int, default=5, help="interleaved runs a variant (default 5)")
    cp.add_argument("--threads", type=positive_int, default=None,
                    help="torch threads (default: torch's, i.e. what training here would use)")
    cp.add_argument("--dry-run", action="store_true", help="measure and print, write nothing")
    cp.set_defaults(func=cmd_cpu_profile)

    add_data_parser(sub)
    add_eval_parser(sub)
    add_coding_parsers(sub)
    return p


class _AboveProgressBars(logging.Handler):
    """Library messages (``logging``, logger ``ddpmkit``) as plain lines on stdout, written with
    ``tqdm.write`` so that a running progress bar (stderr) is cleared first and redrawn below."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stdout)
        except Exception:
            self.handleError(record)


def configure_logging(level: int = logging.INFO) -> None:
    """What the CLI shows of the library's messages: INFO and up of logger ``ddpmkit``, once."""
    logger = logging.getLogger("ddpmkit")
    logger.setLevel(level)
    if not any(isinstance(h, _AboveProgressBars) for h in logger.handlers):
        logger.addHandler(_AboveProgressBars())


def main(argv: list[str] | None = None) -> int:
    from .validate import check_args

    configure_logging()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_args(args)
        return args.func(args) or 0
    except (UserError, ValueError) as e:
        print(f"ddpmkit: error: {' '.join(str(e).splitlines())}", file=sys.stderr)
        return 2
    except OSError as e:  # a file system that is full, read-only or gone
        where = f" ({e.filename})" if e.filename else ""
        print(f"ddpmkit: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"ddpmkit: training stopped: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ddpmkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
