"""Print the README's results tables (Markdown) from the JSON files scripts/fashion_mnist_results.sh writes.

    python scripts/results_table.py [benchmarks/results/fashion-mnist]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ORDER = [("ddpm", 1000), ("ddim", 10), ("ddim", 20), ("ddim", 50), ("ddim", 100), ("dpm++", 10), ("dpm++", 20)]
LABEL = {"ddpm": "DDPM ancestral", "ddim": "DDIM η = 0", "dpm++": "DPM-Solver++(2M)"}


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def fid_table(root: Path) -> list[str]:
    rows, ns = [], set()
    for sampler, steps in ORDER:
        r = _load(root / f"fid_{sampler.replace('++', 'pp')}_{steps}.json")
        if r is None:
            continue
        ns.add(r["n"])
        rows.append(f"| {LABEL[sampler]} | {steps} | {r['n']:,} | {r['fid']:.2f} | {r['precision']:.3f} | "
                    f"{r['recall']:.3f} | {r['inception_score']:.2f} | {r['confident_fraction']:.0%} | "
                    f"{r['confident_classes']}/{r['num_classes']} | {r['seconds_per_image'] * 1000:.0f} |")
    if not rows:
        return []
    any_row = next(_load(p) for p in sorted(root.glob("fid_*_*.json")) if "floor" not in p.name)
    head = [f"n samples per row (seed {any_row['seed']}) against the {any_row['ref_n']:,} "
            f"{any_row['ref_split']} images, {any_row['features']} features ({any_row['feature_dim']}-d); "
            "ms/image: sampling time at batch 256 with 2 threads on this 2-core CPU; classes: classes with at least "
            "one confident sample.", "",
            "| sampler | steps (NFE) | n | FID ↓ | precision | recall | IS | confident (p > 0.9) | classes "
            "| ms/image |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    tail = []
    floors = {_load(f)["results"][0]["floor_train_vs_test"]["n_fake"]: _load(f)["results"][0]
              for f in root.glob("fid_floor_n*.json")}
    for n in sorted(n for n in floors if n in ns):   # one floor per n the rows use
        fl = floors[n]["floor_train_vs_test"]
        tail.append(f"| real training images (floor) | – | {n:,} | {fl['fid']:.2f} | {fl['precision']:.3f} | "
                    f"{fl['recall']:.3f} | {fl['inception_score']:.2f} | – | – | – |")
    if floors:
        nz_n = max(n for n in floors if n in ns) if any(n in ns for n in floors) else max(floors)
        nz = floors[nz_n]["noise_vs_test"]
        tail.append(f"| Gaussian noise | – | {nz_n:,} | {nz['fid']:.2f} | {nz['precision']:.3f} | {nz['recall']:.3f} | "
                    f"{nz['inception_score']:.2f} | – | – | – |")
    return head + rows + tail


def ablation_table(root: Path) -> list[str]:
    """DDIM-50 with eta = 1, other step spacings, or without x0 clipping (fid_ddim_50_*.json), beside the default."""
    rows = []
    for suffix in ("", "_eta1", "_quadratic", "_logsnr", "_noclip"):
        r = _load(root / f"fid_ddim_50{suffix}.json")
        if r is None:
            continue
        spacing = r.get("spacing", "default")
        spacing = "uniform" if spacing == "default" else spacing
        rows.append(f"| {r['eta']:g} | {spacing} | {'yes' if r.get('clip_x0', True) else 'no'} | {r['fid']:.2f} | "
                    f"{r['precision']:.3f} | {r['recall']:.3f} | {r['confident_fraction']:.0%} |")
    if len(rows) < 2:
        return []
    return ["| DDIM-50 η | spacing | x0 clipped | FID ↓ | precision | recall | confident |",
            "|---:|---|---|---:|---:|---:|---:|", *rows]


def bpd_table(root: Path) -> list[str]:
    rows = []
    for loss in ("simple", "hybrid"):
        for schedule in ("cosine", "linear"):
            r = _load(root / f"bpd_digits_{loss}_{schedule}.json")
            if r is None:
                continue
            rows.append(f"| L_{loss} | {r['variance']} | {schedule} | {r['total_bpd']:.3f} ± {r['total_bpd_se']:.3f} | "
                        f"{r['prior_bpd']:.4f} | {r['kl_bpd']:.3f} | {r['decoder_bpd']:.3f} |")
    rd = _load(root / "rate_distortion" / "rate_distortion.json")
    if rd is not None:
        rows.append(f"| L_simple (Fashion-MNIST, shipped) | {rd['variance']} | {rd['schedule']} | "
                    f"{rd['total_bpd']:.3f} ± {rd['total_bpd_se']:.3f} | {rd['prior_bpd']:.4f} | {rd['kl_bpd']:.3f} | "
                    f"{rd['decoder_bpd']:.3f} |")
    if not rows:
        return []
    return ["| model | variance | schedule | NLL bound (bits/dim) | prior | Σ KL | decoder |",
            "|---|---|---|---:|---:|---:|---:|", *rows]


def rd_table(root: Path, points: int = 8) -> list[str]:
    rd = _load(root / "rate_distortion" / "rate_distortion.json")
    if rd is None:
        return []
    T = len(rd["t"])
    idx = sorted({round(i * (T - 1) / (points - 1)) for i in range(points)}, reverse=True)
    return ["| t | rate (bits/dim) | distortion (RMSE, 0–255) |", "|---:|---:|---:|",
            *[f"| {rd['t'][i]} | {rd['rate_bpd'][i]:.4f} | {rd['distortion_rmse'][i]:.2f} |" for i in idx]]


def main(argv=None) -> int:
    root = Path((argv or sys.argv[1:] or ["benchmarks/results/fashion-mnist"])[0])
    tables = (("FID", fid_table(root)), ("DDIM-50 variants", ablation_table(root)), ("bits/dim", bpd_table(root)),
              ("rate-distortion", rd_table(root)))
    for title, lines in tables:
        if lines:
            print(f"### {title}\n")
            print("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
