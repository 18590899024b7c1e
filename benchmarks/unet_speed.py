"""U-Net speed on CPU: training-step and inference throughput against the fp32 matmul ceiling.

    .venv/bin/python benchmarks/unet_speed.py                # full table, writes results/unet_speed.json
    .venv/bin/python benchmarks/unet_speed.py --quick        # fewer repeats
    .venv/bin/python benchmarks/unet_speed.py --compile      # also rows for torch.compile (if it works)

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

Rows with ``impl=ours-onednn-wgrad`` run our network with every convolution's weight gradient left to
oneDNN (``MatmulGradConv2d`` off), rows with ``impl=ours-interp-upsample`` run it with every Upsample
as interpolation + 3x3 convolution, and ``impl=ours-torch-groupnorm`` with torch's GroupNorm kernel
everywhere, for A/Bs of those paths in one run. Rows with ``impl=diffusers`` run
diffusers' ``UNet2DModel`` built from the same architecture (the config our exporter writes), when
diffusers is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ddpmkit.networks import UNet, maybe_compile, unet_preset  # noqa: E402
from ddpmkit.networks.convert_diffusers import unet_config_to_diffusers  # noqa: E402
from ddpmkit.networks.layers import GroupNorm, MatmulGradConv2d, Upsample  # noqa: E402

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

    def __init__(self, model, cfg, batch: int, seed: int = 0, is_diffusers: bool = False):
        g = torch.Generator().manual_seed(seed)
        size = cfg.image_size
        self.model = model
        self.is_diffusers = is_diffusers
        self.x = torch.randn(batch, cfg.in_channels, size, size, generator=g)
        self.t = torch.randint(0, 1000, (batch,), generator=g)
        self.target = torch.randn(batch, cfg.out_channels, size, size, generator=g)
        self.opt = make_adamw(model)

    def forward(self):
        out = self.model(self.x, self.t)
        return out.sample if self.is_diffusers else out

    def train_step(self):
        loss = F.mse_loss(self.forward(), self.target)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def infer(self):
        with torch.no_grad():
            self.forward()

    def run(self, mode: str):
        self.model.train(mode == "train")
        return self.train_step() if mode == "train" else self.infer()

    def flops(self, mode: str, *, model_flops: bool = True) -> int:
        """FLOPs of one run: the model's (every Upsample as interpolation + 3x3 conv), or those executed."""
        self.model.train(mode == "train")
        saved = set_path(self.model, Upsample, "as_transposed_conv", False) if model_flops else None
        try:
            with FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FLOPS) as counter:
                if mode == "train":
                    F.mse_loss(self.forward(), self.target).backward()
                else:
                    self.infer()
        finally:
            if saved is not None:
                set_path(self.model, Upsample, "as_transposed_conv", saved)
        self.opt.zero_grad(set_to_none=True)
        return counter.get_total_flops()


def make_adamw(model):
    """AdamW, fused where this torch supports it on CPU (about 2x faster than the default loop here)."""
    try:
        return torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(model.parameters(), lr=1e-4)


# impl -> (module class, attribute of the fast path it switches off)
PATHS_OFF = {
    "ours-onednn-wgrad": (MatmulGradConv2d, "matmul_weight_grad"),  # weight gradients left to oneDNN
    "ours-interp-upsample": (Upsample, "as_transposed_conv"),  # Upsample as interpolation + 3x3 conv
    "ours-torch-groupnorm": (GroupNorm, "channels_last_sums"),  # torch's GroupNorm kernel everywhere
}


def set_path(model, cls, attr: str, on) -> list:
    """Set ``attr`` of every ``cls`` module of ``model`` to ``on`` (a bool, or one value per module, in
    ``modules()`` order); returns the previous values in that order."""
    mods = [m for m in model.modules() if isinstance(m, cls)]
    values = on if isinstance(on, list) else [on] * len(mods)
    previous = [getattr(m, attr) for m in mods]
    for m, v in zip(mods, values, strict=True):
        setattr(m, attr, v)
    return previous


def build(impl: str, preset: str):
    cfg = unet_preset(preset)
    torch.manual_seed(0)
    if impl == "ours":
        return UNet(cfg), cfg, False
    if impl == "ours-nchw":
        cfg = unet_preset(preset, channels_last=False)
        return UNet(cfg), cfg, False
    if impl in PATHS_OFF:  # ours with one fast path switched off (A/B)
        model = UNet(cfg)
        set_path(model, *PATHS_OFF[impl], False)
        return model, cfg, False
    if impl == "diffusers":
        from diffusers import UNet2DModel

        kwargs = {k: v for k, v in unet_config_to_diffusers(cfg).items() if not k.startswith("_")}
        return UNet2DModel(**kwargs), cfg, True
    raise ValueError(f"unknown impl {impl!r}")


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
        help="ours ours-nchw ours-onednn-wgrad ours-interp-upsample ours-torch-groupnorm diffusers "
        "(default: ours diffusers)",
    )
    p.add_argument("--preset", nargs="*", default=None, help="subset of the presets")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "unet_speed.json"))
    args = p.parse_args(argv)
    repeats = 3 if args.quick else args.repeats
    torch.set_num_threads(args.threads)

    impls = args.impl or ["ours", "diffusers"]
    if "diffusers" in impls:
        try:
            import diffusers  # noqa: F401
        except ImportError:
            print("diffusers not installed: skipping the diffusers comparison rows")
            impls = [i for i in impls if i != "diffusers"]
    if args.compile:
        impls.append("ours+compile")

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
    for preset, batch, modes in CASES:
        if args.preset and preset not in args.preset:
            continue
        for impl in impls:
            base_impl = "ours" if impl == "ours+compile" else impl
            model, cfg, is_diff = build(base_impl, preset)
            case = Case(model, cfg, batch, is_diffusers=is_diff)
            flops = {m: case.flops(m) for m in modes}
            executed = {m: case.flops(m, model_flops=False) for m in modes}
            if impl == "ours+compile":
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
                    f"{preset:14} {impl:20} {mode:5} {batch:5d} {batch / sec:8.1f} "
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
        machine=platform.processor() or platform.machine(),
        cpu=cpu_name(),
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
        "| model | impl | mode | batch | img/s | model GFLOP/img | executed GFLOP/img | model GFLOP/s "
        "| ceiling GFLOP/s | frac of ceiling |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['impl']} | {r['mode']} | {r['batch']} | {r['img_per_s']:.1f} | "
            f"{r['gflop_per_img']:.2f} | {r['executed_gflop_per_img']:.2f} | {r['gflop_per_s']:.1f} | "
            f"{r['ceiling_gflop_per_s']:.1f} | "
            f"{r['frac_of_ceiling']:.2f} |"
        )
    print(f"\nfp32 matmul ceiling (median over the run): {ceiling:.1f} GFLOP/s")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
