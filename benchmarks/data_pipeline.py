"""The prepared-data pipeline at scale: decode throughput, random-batch reads, and the trainer's memory.

    nice -n 10 .venv/bin/python benchmarks/data_pipeline.py               # all cases, ~30-60 min on 2 shared cores
    nice -n 10 .venv/bin/python benchmarks/data_pipeline.py --cases 64:10000 --no-train

Synthetic folders (JPEG, quality 90, photo-like smooth content with grain, 1.1-1.5x wider and 1.0-1.2x
taller than the target so every image is resized and cropped, 1000 per subfolder) are made under --root
(default /tmp/ddpmkit-bench, never the repository) and reused. For each case (target size, image count):

* decode: ``prepare(force=True)`` with 1 (folders up to --one-worker-max) and 2 worker processes ->
  images/s (and the up-to-date check of an existing copy: scanning and fingerprinting the folder, which
  every ``train`` start pays);
* read: random batches of 64 exactly as the trainer draws them (slices of a seeded permutation) from the
  memory-mapped copy, cold (page cache dropped: ``/proc/sys/vm/drop_caches`` when writable, else
  ``posix_fadvise(DONTNEED)`` on the file) and warm -> images/s;
* step: the seconds of one training step (forward, backward, AdamW) of the matching U-Net -- the paper
  model (iddpm-imagenet64 at 64, ddpm-256 at 256) at a small batch, and folder-small at 64 -- and the
  images/s it consumes; "read / need" is the read throughput over that;
* memory: a fresh process trains 100 steps through the prepared copy (tiny U-Net, batch 4) and reports
  its RssAnon / RssFile / VmHWM from /proc/self/status and how long its steps waited for data.

Writes benchmarks/results/data_pipeline.json (with the CPU model and load average). The machine may be
shared: the numbers are what this run saw, not clean measurements.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _machine import cpu_info, cpu_model  # noqa: E402
from _synthetic_folder import make_folder  # noqa: E402

from ddpmkit.data import prepared as P  # noqa: E402

BATCH = 64
TINY = "{ ch = 8, num_res_blocks = 1 }"  # the data, not the model, is measured



def drop_cache(path: Path) -> str:
    """Evict ``path`` from the page cache; returns the method that worked."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
        return "drop_caches"
    except OSError:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        return "fadvise"


def cached_fraction(path: Path) -> float | None:
    """Fraction of ``path``'s pages in the page cache (mincore on a fresh read-only mapping), or None."""
    try:
        import ctypes
        import mmap

        mm = np.memmap(path, dtype=np.uint8, mode="r")
        n = (mm.size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        vec = (ctypes.c_ubyte * n)()
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        rc = libc.mincore(ctypes.c_void_p(mm.ctypes.data), ctypes.c_size_t(mm.size), vec)
        del mm
        return None if rc else float(np.frombuffer(vec, np.uint8).__and__(1).mean())
    except (OSError, ValueError, AttributeError):
        return None


def read_batches(path: Path, n_batches: int, seed: int = 0) -> float:
    """images/s of ``n_batches`` trainer-style random batches (rows copied out of the memory map)."""
    ds = P.open_prepared(path)
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))
    t0 = time.perf_counter()
    for b in range(n_batches):
        x, _ = ds.rows(perm[(b * BATCH) % (len(ds) - BATCH):][:BATCH])
        assert x.shape[0] == BATCH
    return n_batches * BATCH / (time.perf_counter() - t0)


def step_seconds(preset: str, size: int, batch: int, repeats: int, warmup: bool = True, **options) -> dict:
    """Median seconds of ``repeats`` training steps (after one warm-up step unless ``warmup=False``), one
    thread: on a machine shared by several jobs two spinning OpenMP threads lose more than they gain."""
    from ddpmkit.networks import UNet, unet_preset

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = UNet(unet_preset(preset, image_size=size, **options))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)
    x = torch.randn(batch, 3, size, size)
    t = torch.randint(0, 1000, (batch,))
    out_ch = net.config.out_channels
    times = []
    for i in range(repeats + int(warmup)):
        t0 = time.perf_counter()
        loss = (net(x, t)[:, :3] - x).square().mean() if out_ch != 3 else (net(x, t) - x).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i or not warmup:  # the first step warms up allocators and oneDNN primitives
            times.append(time.perf_counter() - t0)
    s = float(np.median(times))
    return {"preset": preset, "options": options, "batch": batch, "params": sum(p.numel() for p in net.parameters()),
            "step_s": s, "img_per_s": batch / s, "repeats": repeats, "warmup": warmup, "threads": 1}


def memory_child(args) -> None:
    """Train 100 steps through the prepared copy and print the memory figures as JSON (a fresh process)."""
    from ddpmkit.config import load_config
    from ddpmkit.training.trainer import Trainer

    def status() -> dict:
        out = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("RssAnon", "RssFile", "VmHWM", "VmRSS"):
                out[k] = int(v.split()[0]) * 1024
        return out

    sets = [f'data.data_dir="{args.folder}"', f"data.image_size={args.size}", f'data.prepared_dir="{args.prepared}"',
            f'run.out_dir="{args.out}"', f"train.steps={args.steps}", "train.batch_size=4", "train.log_every=10",
            "train.checkpoint_every=0", "train.sample_n=2", "train.sample_steps=2", "train.warmup=0",
            f"model.options={TINY}", "run.threads=1", "data.flip=true"]
    cfg = load_config(ROOT / "configs" / "image-folder.toml", sets)
    trainer = Trainer(cfg, progress=False, log=lambda m: None)
    before = status()
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    after = status()
    rows = [json.loads(r) for r in (Path(args.out) / "metrics.jsonl").read_text().splitlines()]
    print(json.dumps({"before": before, "after": after, "train_s": seconds, "steps": args.steps,
                      "data_wait_s": sum(r.get("data_wait_s", 0.0) for r in rows), "images": len(trainer.data)}))


def run_memory(folder: Path, size: int, prepared: Path, out: Path, steps: int) -> dict:
    cmd = [sys.executable, __file__, "--memory-child", "--folder", str(folder), "--size", str(size),
           "--prepared", str(prepared), "--out", str(out), "--steps", str(steps)]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="/tmp/ddpmkit-bench")
    ap.add_argument("--cases", default="64:10000,64:100000,256:10000", help="SIZE:COUNT,...")
    ap.add_argument("--read-batches", type=int, default=50)
    ap.add_argument("--no-train", action="store_true", help="skip the step-time and memory runs")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--one-worker-max", type=int, default=10_000,
                    help="decode with 1 worker only for folders up to this size (2 workers always)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "data_pipeline.json"))
    ap.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--prepared", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        return memory_child(args)

    root = Path(args.root)
    results = {"cpu_model": cpu_model(), "cpu": cpu_info(), "cores": os.cpu_count(), "torch": torch.__version__,
               "load_average_start": os.getloadavg(), "batch": BATCH, "cases": []}
    steps_cache: dict[int, list] = {}
    print(f"CPU: {results['cpu']} ({results['cores']} cores), load {os.getloadavg()[0]:.1f}; machine may be shared")
    for case in args.cases.split(","):
        size, count = (int(v) for v in case.split(":"))
        label = f"{size}px-{count // 1000}k"
        folder = make_folder(root / f"f{size}-{count // 1000}k", count, size)
        prepared = root / "prepared"
        src = P.folder_source(folder, size, 0)
        row: dict = {"case": label, "size": size, "count": count, "decode": {}}
        for workers in (1, 2) if count <= args.one_worker_max else (2,):
            report = P.prepare(src, cache_root=prepared, workers=workers, force=True, log=lambda m: None)
            row["decode"][str(workers)] = {"seconds": report.seconds, "img_per_s": report.count / report.seconds}
        t0 = time.perf_counter()
        fresh = P.prepare(src, cache_root=prepared, log=lambda m: None)
        row["fresh_check_s"] = time.perf_counter() - t0
        assert not fresh.rebuilt
        images = fresh.path / P.IMAGES
        row["prepared_bytes"] = images.stat().st_size
        row["cold_method"] = drop_cache(images)
        row["cached_after_drop"] = cached_fraction(images)
        row["read_cold_img_per_s"] = read_batches(images.parent, args.read_batches, seed=1)
        read_batches(images.parent, max(1, count // BATCH), seed=2)  # touch everything: warm
        row["cached_warm"] = cached_fraction(images)
        row["read_warm_img_per_s"] = read_batches(images.parent, args.read_batches, seed=3)
        if not args.no_train:
            if size not in steps_cache:
                if size == 64:
                    steps_cache[size] = [step_seconds("iddpm-imagenet64", size, 1, 1),
                                         step_seconds("folder-small", size, 8, 1)]
                else:  # one cold step of the 114M model: minutes on a shared 2-core machine
                    steps_cache[size] = [step_seconds("ddpm-256", size, 1, 1, warmup=False)]
            row["steps"] = steps_cache[size]
            row["read_over_need"] = {s["preset"]: row["read_cold_img_per_s"] / s["img_per_s"] for s in row["steps"]}
            if size == 64:
                row["memory"] = run_memory(folder, size, prepared, root / f"run-{label}", args.steps)
        results["cases"].append(row)
        print(json.dumps(row, indent=1), flush=True)

    results["load_average_end"] = os.getloadavg()
    mem = {r["case"]: r["memory"]["after"]["RssAnon"] for r in results["cases"] if "memory" in r}
    if "64px-10k" in mem and "64px-100k" in mem:
        results["rss_anon_100k_over_10k"] = mem["64px-100k"] / mem["64px-10k"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))

    head = ("case", "decode 1w/s", "decode 2w/s", "check s", "MiB", "cold img/s", "warm img/s",
            "step s (preset, batch)", "read/need", "RssAnon MiB", "wait s")
    table = []
    for r in results["cases"]:
        mem = r.get("memory")
        d1 = r["decode"].get("1")
        first = [r["case"], f"{d1['img_per_s']:.0f}" if d1 else "-", f"{r['decode']['2']['img_per_s']:.0f}",
                 f"{r['fresh_check_s']:.2f}", f"{r['prepared_bytes'] / 2**20:.0f}", f"{r['read_cold_img_per_s']:.0f}",
                 f"{r['read_warm_img_per_s']:.0f}"]
        tail = [f"{mem['after']['RssAnon'] / 2**20:.0f}", f"{mem['data_wait_s']:.2f}"] if mem else ["-", "-"]
        for i, st in enumerate(r.get("steps") or [None]):
            step = [f"{st['step_s']:.2f} ({st['preset']}, {st['batch']})", f"{r['read_over_need'][st['preset']]:.0f}x"
                    ] if st else ["-", "-"]
            table.append((first if i == 0 else [""] * len(first)) + step + (tail if i == 0 else ["", ""]))
    widths = [max(len(h), *(len(row[j]) for row in table)) for j, h in enumerate(head)]
    print()
    for row in [head, *table]:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    if "rss_anon_100k_over_10k" in results:
        print(f"RssAnon after {args.steps} steps, 100k / 10k images: "
              f"{results['rss_anon_100k_over_10k']:.3f} (goal <= 1.10)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
