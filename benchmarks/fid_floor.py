"""The floor and the ceiling of FID with the shipped classifier features.

* floor: FID(1,000 real training images vs the test set) -- what a perfect model scores at n = 1,000;
* noise: FID(Gaussian-noise images, clipped to [-1, 1], vs the test set) -- an obviously bad "model".

Also precision/recall (k = 3), Inception Score and class coverage of each set.  Prints a table and
writes benchmarks/results/fid_floor.json.  Digits always; Fashion-MNIST when its files are installed.

    python benchmarks/fid_floor.py [--n 1000] [--datasets digits,fashion-mnist]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from _machine import cpu_info

from ddpmkit.data import load_dataset
from ddpmkit.data.pixels import to_model_range
from ddpmkit.evaluation import fid_of_images, get_feature_extractor
from ddpmkit.evaluation.classifier import classifier_card

OUT = Path(__file__).parent / "results" / "fid_floor.json"


def floor_and_noise(dataset: str, n: int = 1000, seed: int = 0) -> dict:
    ext = get_feature_extractor("classifier", dataset)
    test = load_dataset(dataset, split="test")
    train = load_dataset(dataset, split="train", n=min(n, 10**9), seed=seed)
    real_test = to_model_range(test.x)
    noise = torch.randn((len(train), *test.shape), generator=torch.Generator().manual_seed(seed)).clamp(-1, 1)
    t0 = time.perf_counter()
    floor = fid_of_images(ext, real_test, to_model_range(train.x))
    worst = fid_of_images(ext, real_test, noise)
    keep = ("fid", "precision", "recall", "inception_score", "coverage", "mean_max_prob", "n_fake", "n_real")
    return {"dataset": dataset, "features": ext.name, "feature_dim": ext.feature_dim,
            "classifier_test_accuracy": classifier_card(dataset).get("test_accuracy"),
            "floor_train_vs_test": {k: floor[k] for k in keep}, "noise_vs_test": {k: worst[k] for k in keep},
            "seconds": round(time.perf_counter() - t0, 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1000, help="training images (and noise images) per set")
    p.add_argument("--datasets", default="digits,fashion-mnist")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for name in args.datasets.split(","):
        try:
            rows.append(floor_and_noise(name.strip(), args.n))
        except ValueError as e:  # DataError / UserError: data or weights not installed
            print(f"skipping {name}: {e}", file=sys.stderr)
    print(f"{'dataset':<15}{'set':<22}{'n':>6}{'FID':>10}{'prec':>7}{'recall':>7}{'IS':>7}{'cover':>7}{'maxp':>7}")
    for r in rows:
        for label, key in (("train subset (floor)", "floor_train_vs_test"), ("noise", "noise_vs_test")):
            m = r[key]
            print(f"{r['dataset']:<15}{label:<22}{m['n_fake']:>6}{m['fid']:>10.3f}{m['precision']:>7.3f}"
                  f"{m['recall']:>7.3f}{m['inception_score']:>7.2f}{m['coverage']:>7.2f}{m['mean_max_prob']:>7.3f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"results": rows, "torch": torch.__version__, "machine": platform.machine(),
                               "cpu": cpu_info(),
                               "reference": "test split (digits: 359 images; fashion-mnist: 10,000)"}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
