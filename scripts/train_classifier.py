"""Train the small CNN classifier used as the FID feature network for a built-in dataset.

    python scripts/train_classifier.py --dataset fashion-mnist   # a few minutes on one CPU thread
    python scripts/train_classifier.py --dataset digits          # seconds

Writes ``src/ddpmkit/assets/classifier-DATASET.safetensors`` (weights) and ``classifier-DATASET.json``
(architecture, test accuracy, weights hash, this command).  Deterministic: fixed seeds, one thread
by default, a torch.Generator for the batch order.  Trains on the train split, reports accuracy on
the test split (never used for training or model selection).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ddpmkit.data import load_dataset
from ddpmkit.evaluation.classifier import (
    CLASSIFIER_CONFIGS,
    SmallClassifier,
    card_path,
    config_dict,
    file_sha256,
    weights_path,
)

DEFAULTS = {"fashion-mnist": {"epochs": 3, "batch_size": 128, "lr": 3e-3},
            "digits": {"epochs": 40, "batch_size": 64, "lr": 3e-3}}


@torch.no_grad()
def accuracy(model, x, y, batch_size=1000) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].float() / 127.5 - 1.0
        correct += int((model(xb).argmax(1) == y[i:i + batch_size]).sum())
    return correct / len(x)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, choices=list(CLASSIFIER_CONFIGS))
    p.add_argument("--data-dir", default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="weights path (default: the package assets)")
    args = p.parse_args(argv)
    hp = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in DEFAULTS[args.dataset].items()}
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train = load_dataset(args.dataset, data_dir=args.data_dir, split="train")
    test = load_dataset(args.dataset, data_dir=args.data_dir, split="test")
    cfg = CLASSIFIER_CONFIGS[args.dataset]
    model = SmallClassifier(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    steps_per_epoch = math.ceil(len(train) / hp["batch_size"])
    total = hp["epochs"] * steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=hp["lr"], total_steps=total, pct_start=0.15)
    g = torch.Generator().manual_seed(args.seed)
    flip = args.dataset == "fashion-mnist"  # clothes are left-right symmetric; digits are not
    print(f"{args.dataset}: {len(train)} train / {len(test)} test images, {n_params:,} parameters, "
          f"{hp['epochs']} epochs x {steps_per_epoch} steps", flush=True)
    t0 = time.perf_counter()
    for epoch in range(hp["epochs"]):
        model.train()
        perm = torch.randperm(len(train), generator=g)
        running = 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * hp["batch_size"]:(i + 1) * hp["batch_size"]]
            x, y = train.batch(idx)
            if flip:
                m = torch.rand(len(idx), generator=g) < 0.5
                x = torch.where(m[:, None, None, None], x.flip(-1), x)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += loss.item()
        print(f"epoch {epoch + 1}/{hp['epochs']}: loss {running / steps_per_epoch:.4f}, "
              f"test acc {accuracy(model, test.x, test.y):.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    model.eval()
    train_acc = accuracy(model, train.x, train.y)
    test_acc = accuracy(model, test.x, test.y)
    out = Path(args.out) if args.out else weights_path(args.dataset)
    out.parent.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(out))
    card = {
        "dataset": args.dataset, "architecture": "SmallClassifier", "config": config_dict(cfg),
        "parameters": n_params, "feature_dim": cfg.widths[-1],
        "test_accuracy": round(test_acc, 4), "train_accuracy": round(train_acc, 4),
        "test_size": len(test), "train_size": len(train), "hyper_parameters": {**hp, "seed": args.seed},
        "weights_sha256": file_sha256(out), "train_seconds": round(time.perf_counter() - t0, 1),
        "command": f"python scripts/train_classifier.py --dataset {args.dataset}",
        "torch": torch.__version__,
    }
    cpath = card_path(args.dataset) if not args.out else out.with_suffix(".json")
    cpath.write_text(json.dumps(card, indent=2) + "\n")
    print(f"test accuracy {test_acc:.4f} (train {train_acc:.4f}); wrote {out} ({out.stat().st_size / 1e6:.2f} MB) "
          f"and {cpath}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
