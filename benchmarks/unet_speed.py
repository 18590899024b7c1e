"""U-Net speed on CPU: training-step and inference throughput against the fp32 matmul ceiling.

    .venv/bin/python benchmarks/unet_speed.py                # full table, writes results/unet_speed.json
    .venv/bin/python benchmarks/unet_speed.py --quick        # fewer repeats
    .venv/bin/python benchmarks/unet_speed.py --compile      # also rows for torch.compile, ours and diffusers

For each case it measures (medians over ``--repeats`` timed runs after warm-up):

* train: forward, MSE against a random target, backward, AdamW step (``zero_grad(set_to_none)``);
* infer: ``torch.no_grad()`` forward in eval mode.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matmuls; the optimizer and
element-wise ops count zero). It counts CPU ``scaled_dot_product_attention`` as zero, so the formulas of
the GPU kernels are registered for the CPU flash-attention ops. "ceiling" is the GFLOP/s of a large fp32
matmul with the same thread count. The machine may be shared and its speed drifts from minute to minute
(the load average is recorded in the JSON), so every timed run is paired with a ceiling sample taken just
before it: "frac" is the median over the runs of achieved / paired ceiling, and the row's "ceiling" is
the median of its paired samples.

FLOPs are *model* FLOPs: those of the architecture as the papers and diffusers compute it, in particular
each Upsample as nearest-neighbour doubling followed by a 3x3 convolution. Our ``Upsample`` computes the
same function as one stride-2 transposed convolution with 2.25x fewer multiply-adds
(``layers.nearest_upsample_conv``), so our model FLOPs are counted with that path switched off; the FLOPs
it really executes are kept as ``executed_gflop_per_img`` ("exec" column). With model FLOPs, fractions of
different implementations compare as their img/s do (like "model FLOPs utilization").

Rows with ``impl=ours`` run our network with the CPU speed paths this machine keeps
(``ddpmkit.networks.cpu_fast``; the JSON records which and where the choice came from); ``ours-all``
and ``ours-none`` with every path on / off, and ``ours-no-PATH`` with one path off, for A/Bs in one run.
Our bf16 rows run in the layout the library picks for bf16 (``precision.use_layout_for``: the one measured
faster for that network on this machine, cached);
``ours-nchw`` runs NCHW in every precision, ``ours-cl`` channels_last in every precision.
Rows with ``impl=diffusers`` run diffusers' ``UNet2DModel`` built from the same architecture (the config
our exporter writes), in the same process right after ours (diffusers is installed by ``make setup``).
``--precision fp32 bf16`` adds rows under ``torch.autocast("cpu", dtype=torch.bfloat16)`` for every impl
(fp32 weights and AdamW state, the MSE in fp32); their FLOP fractions are still against the fp32 ceiling.

``--profile`` runs the library's profiler (``ddpmkit cpu-profile``, ``networks/cpu_profile.py``) on these
cases: for each case and mode, a whole training step / forward with each path on alone against the same
with none (torch's ops), interleaved with an A/A control (none against none); it keeps each path that
makes some step at least ``cpu_fast.MIN_GAIN`` (3 %) faster and none slower by more than
``cpu_fast.MAX_LOSS`` (2 %), both bounds raised to the A/A noise of the run where that is larger
(``cpu_fast.keep_paths``), and writes that choice to the per-machine cache that ``cpu_fast``'s ``auto``
mode reads (keyed by CPU model and torch version), and the measurements to results/cpu_fast_profile.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from _machine import cpu_info  # noqa: E402

from ddpmkit.networks import UNet, cpu_fast, cpu_profile, maybe_compile, unet_preset  # noqa: E402
from ddpmkit.networks.convert_diffusers import unet_config_to_diffusers  # noqa: E402
from ddpmkit.networks.precision import use_layout_for  # noqa: E402

aten = torch.ops.aten


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kw):
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# FlopCounterMode knows the GPU attention kernels only; the CPU ones get the same formulas.
CPU_SDPA_FLOPS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flop,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flop,
}

CASES = [  # (preset, batch, modes)
    ("ddpm-cifar10", 8, ("train", "infer")),
    ("fashion-mnist", 32, ("train", "infer")),
    ("fashion-mnist", 128, ("train", "infer")),
]


# ----------------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------------


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_ceiling(n: int = 2048, repeats: int = 7, warmup: int = 2) -> float:
    """fp32 GFLOP/s of an n x n x n matmul (the dense-compute ceiling of this machine and thread count)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    t = median_time(lambda: torch.mm(a, b, out=out), repeats, warmup=warmup)
    return 2 * n**3 / t / 1e9


def paired_runs(fn, repeats: int, warmup: int = 1) -> tuple[list[float], list[float]]:
    """Time ``fn`` ``repeats`` times, each run right after a short ceiling sample.

    Returns the seconds of every run and the ceiling (GFLOP/s) sampled just before it.
    """
    for _ in range(warmup):
        fn()
    secs, ceilings = [], []
    for _ in range(repeats):
        ceilings.append(matmul_ceiling(repeats=3, warmup=1))
        start = time.perf_counter()
        fn()
        secs.append(time.perf_counter() - start)
    return secs, ceilings


class Case:
    """One model + batch: builds the callables for a training step and an inference forward."""

    def __init__(self, model, cfg, batch: int, seed: int = 0, is_diffusers: bool = False,
                 precision: str = "fp32", paths=None, library_layout: bool = True):
        g = torch.Generator().manual_seed(seed)
        if library_layout and precision == "bf16":  # the layout the trainer and samplers use under bf16
            use_layout_for(model, "cpu", torch.bfloat16)
        self.precision = precision
        self.paths = paths  # the cpu_fast paths this case runs with (None: the machine's choice)
        size = cfg.image_size
        self.model = model
        self.is_diffusers = is_diffusers
        self.x = torch.randn(batch, cfg.in_channels, size, size, generator=g)
        self.t = torch.randint(0, 1000, (batch,), generator=g)
        self.target = torch.randn(batch, cfg.out_channels, size, size, generator=g)
        self.opt = make_adamw(model)

    def forward(self):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            out = self.model(self.x, self.t)
        return (out.sample if self.is_diffusers else out).float()

    def train_step(self):
        loss = F.mse_loss(self.forward(), self.target)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def infer(self):
        with torch.no_grad():
            self.forward()

    def active_paths(self) -> frozenset[str]:
        return self.paths if self.paths is not None else cpu_fast.active()

    def run(self, mode: str):
        self.model.train(mode == "train")
        with cpu_fast.paths(self.active_paths()):
            return self.train_step() if mode == "train" else self.infer()

    def flops(self, mode: str, *, model_flops: bool = True) -> int:
        """FLOPs of one run: the model's (every Upsample as interpolation + 3x3 conv), or those executed."""
        self.model.train(mode == "train")
        on = self.active_paths()
        with cpu_fast.paths(set(on) - {"upsample_transposed"} if model_flops else on):
            with FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FLOPS) as counter:
                if mode == "train":
                    F.mse_loss(self.forward(), self.target).backward()
                else:
                    self.infer()
        self.opt.zero_grad(set_to_none=True)
        return counter.get_total_flops()


def make_adamw(model):
    """AdamW, fused where this torch supports it on CPU (about 2x faster than the default loop here)."""
    try:
        return torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(model.parameters(), lr=1e-4)


def impl_paths(impl: str):
    """The cpu_fast paths an ``ours*`` impl runs with (None: the machine's own choice)."""
    if impl in ("ours", "ours-nchw", "ours-cl", "ours+compile", "diffusers", "diffusers+compile"):
        return None
    if impl == "ours-all":
        return frozenset(cpu_fast.PATHS)
    if impl == "ours-none":
        return frozenset()
    if impl.startswith("ours-no-") and impl[len("ours-no-"):] in cpu_fast.PATHS:
        return frozenset(cpu_fast.PATHS) - {impl[len("ours-no-"):]}
    raise ValueError(f"unknown impl {impl!r}")


def build(impl: str, preset: str):
    cfg = unet_preset(preset)
    torch.manual_seed(0)
    if impl == "diffusers":
        from diffusers import UNet2DModel

        kwargs = {k: v for k, v in unet_config_to_diffusers(cfg).items() if not k.startswith("_")}
        return UNet2DModel(**kwargs), cfg, True
    impl_paths(impl)  # an unknown name is an error before any work
    if impl == "ours-nchw":
        cfg = unet_preset(preset, channels_last=False)
    return UNet(cfg), cfg, False


# ----------------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------------


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="3 repeats")
    p.add_argument("--compile", action="store_true", help="add torch.compile rows (falls back if unavailable)")
    p.add_argument(
        "--impl",
        nargs="*",
        default=None,
        help="ours ours-nchw ours-cl ours-all ours-none " + " ".join(f"ours-no-{p}" for p in cpu_fast.PATHS)
        + " diffusers (default: ours diffusers)",
    )
    p.add_argument("--precision", nargs="*", default=["fp32"], choices=["fp32", "bf16"],
                   help="fp32 and/or bf16 (CPU autocast) rows for every impl (default fp32)")
    p.add_argument("--profile", action="store_true",
                   help="measure which CPU speed paths help on this machine and cache the choice for `auto`")
    p.add_argument("--preset", nargs="*", default=None, help="subset of the presets")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "unet_speed.json"))
    args = p.parse_args(argv)
    repeats = 3 if args.quick else args.repeats
    torch.set_num_threads(args.threads)

    cases = [c for c in CASES if not args.preset or c[0] in args.preset]
    if args.profile:  # the library's profiler (ddpmkit cpu-profile), on this benchmark's cases
        found = cpu_profile.profile_cpu_paths([(preset, batch) for preset, batch, _ in cases], repeats)
        print(f"kept: {', '.join(found['kept']) or 'none'}  (written to {found['path']})")
        out = Path(args.out).with_name("cpu_fast_profile.json")
        result = dict(torch=torch.__version__, cpu=cpu_info(), load_average=load_average(), **found)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
        return

    impls = args.impl or ["ours", "diffusers"]
    if args.compile:  # the peer compiled too, so that the compiled rows compare like with like
        impls += ["ours+compile"] + (["diffusers+compile"] if "diffusers" in impls else [])

    load_start = load_average()
    ceilings = [matmul_ceiling()]
    rows = []
    header = (
        f"{'model':14} {'impl':20} {'mode':5} {'batch':>5} {'img/s':>8} {'GFLOP/img':>9} {'exec':>6} "
        f"{'GFLOP/s':>8} {'frac':>5}"
    )
    print(f"threads={args.threads} repeats={repeats} matmul ceiling {ceilings[0]:.1f} GFLOP/s (start)")
    print(header)
    print("-" * len(header))
    for (preset, batch, modes), precision in ((c, p) for c in cases for p in args.precision):
        for impl in impls:
            base_impl = impl.removesuffix("+compile")
            model, cfg, is_diff = build(base_impl, preset)
            case = Case(model, cfg, batch, is_diffusers=is_diff, precision=precision, paths=impl_paths(impl),
                        library_layout=impl != "ours-cl")
            flops = {m: case.flops(m) for m in modes}
            executed = {m: case.flops(m, model_flops=False) for m in modes}
            if impl.endswith("+compile"):
                compiled = maybe_compile(model, example_inputs=(case.x, case.t))
                if compiled is model:
                    print("torch.compile unavailable here: no compiled rows")
                    continue
                case.model = compiled
            for mode in modes:
                # The machine is shared: every timed run is divided by a ceiling sampled just before it.
                run_secs, run_ceilings = paired_runs(lambda case=case, mode=mode: case.run(mode), repeats, warmup=1)
                sec, ceiling = statistics.median(run_secs), statistics.median(run_ceilings)
                frac = statistics.median(
                    flops[mode] / s / 1e9 / c for s, c in zip(run_secs, run_ceilings, strict=True)
                )
                ceilings.append(ceiling)
                gflops = flops[mode] / sec / 1e9
                row = dict(
                    model=preset,
                    impl=impl,
                    precision=precision,
                    mode=mode,
                    batch=batch,
                    img_per_s=batch / sec,
                    seconds=sec,
                    gflop_per_img=flops[mode] / batch / 1e9,
                    executed_gflop_per_img=executed[mode] / batch / 1e9,
                    gflop_per_s=gflops,
                    ceiling_gflop_per_s=ceiling,
                    frac_of_ceiling=frac,
                    run_seconds=run_secs,
                    run_ceilings_gflop_per_s=run_ceilings,
                )
                rows.append(row)
                print(
                    f"{preset:14} {impl + ' ' + precision:20} {mode:5} {batch:5d} {batch / sec:8.1f} "
                    f"{row['gflop_per_img']:9.2f} {row['executed_gflop_per_img']:6.2f} {gflops:8.1f} {frac:5.2f}",
                    flush=True,
                )
            del case, model
    ceilings.append(matmul_ceiling())
    ceiling = statistics.median(ceilings)
    print(f"matmul ceiling {ceilings[-1]:.1f} GFLOP/s (end), median of all {len(ceilings)} samples {ceiling:.1f}")
    print_table(rows, ceiling)

    result = dict(
        torch=torch.__version__,
        threads=args.threads,
        repeats=repeats,
        cpu=cpu_info(),
        cpu_fast_paths=sorted(cpu_fast.active()),
        cpu_fast_source=cpu_fast.source(),
        load_average_start=load_start,
        load_average_end=load_average(),
        matmul_ceiling_gflops=ceiling,
        matmul_ceiling_samples=ceilings,
        rows=rows,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def print_table(rows, ceiling):
    print()
    print(
        "| model | impl | precision | mode | batch | img/s | model GFLOP/img | executed GFLOP/img | model GFLOP/s "
        "| ceiling GFLOP/s | frac of ceiling |"
    )
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['impl']} | {r['precision']} | {r['mode']} | {r['batch']} | {r['img_per_s']:.1f} | "
            f"{r['gflop_per_img']:.2f} | {r['executed_gflop_per_img']:.2f} | {r['gflop_per_s']:.1f} | "
            f"{r['ceiling_gflop_per_s']:.1f} | "
            f"{r['frac_of_ceiling']:.2f} |"
        )
    print(f"\nfp32 matmul ceiling (median over the run): {ceiling:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
