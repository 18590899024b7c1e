"""Lossless compression of Fashion-MNIST test images: the DDPM bits-back codec against PNG, WebP and xz.

For ``pretrained:fashion-mnist`` at the full T = 1000 steps and respaced to fewer (``--steps``):
encode N test images into one stream, decode it, count exact round trips, and compare the file's
bits/dim with the variational bound of ``eval nll`` (``evaluate_nll``) on the same images.  In the
same run the images are also compressed with PNG (Pillow, optimize=True), lossless WebP (method 6)
and xz (preset 9 | extreme), each per image and as one batch (a 10 x 10 grid for PNG/WebP, the raw
concatenated bytes for xz).  Prints a table and writes benchmarks/results/codec.json.

    python benchmarks/codec.py                     # 100 images, T = 1000 and 100 steps (about an hour on 2 cores)
    python benchmarks/codec.py --n 8 --steps 20    # a quick look
"""

from __future__ import annotations

import argparse
import io
import json
import lzma
import time
from pathlib import Path

import numpy as np
import torch
from _machine import cpu_info, cpu_model
from PIL import Image

from ddpmkit.coding.codec import compress_array, decompress_bytes
from ddpmkit.data import load_dataset
from ddpmkit.data.pixels import to_model_range
from ddpmkit.diffusion.timesteps import respaced
from ddpmkit.evaluation.likelihood import evaluate_nll
from ddpmkit.runs import load_run, model_fn_of

OUT = Path(__file__).parent / "results" / "codec.json"



def classic_codecs(pix: np.ndarray) -> dict:
    """bits/dim of PNG, lossless WebP and xz on uint8 images (N, 1, H, W), per image and as one batch."""
    n, _, h, w = pix.shape
    dims = pix.size

    def png(a):
        b = io.BytesIO()
        Image.fromarray(a).save(b, format="PNG", optimize=True)
        return len(b.getvalue())

    def webp(a):
        b = io.BytesIO()
        Image.fromarray(a).save(b, format="WEBP", lossless=True, quality=100, method=6)
        return len(b.getvalue())

    def xz(a):
        return len(lzma.compress(a.tobytes(), preset=9 | lzma.PRESET_EXTREME))

    side = int(np.ceil(np.sqrt(n)))
    grid = np.zeros((side * h, side * w), dtype=np.uint8)
    for i in range(n):
        grid[(i // side) * h:(i // side + 1) * h, (i % side) * w:(i % side + 1) * w] = pix[i, 0]
    out = {}
    for name, fn in (("png", png), ("webp", webp), ("xz", xz)):
        per = sum(fn(np.ascontiguousarray(pix[i, 0])) for i in range(n))
        batch = fn(grid) if name != "xz" else fn(np.ascontiguousarray(pix))
        out[name] = {"per_image_bpd": 8 * per / dims, "batch_bpd": 8 * batch / dims}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100, help="test images (the first n)")
    ap.add_argument("--steps", type=int, nargs="+", default=[100, 1000], help="step counts to code with")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the network")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    run = load_run("pretrained:fashion-mnist")
    data = load_dataset("fashion-mnist", split="test")
    x, _ = data.batch(torch.arange(args.n))
    pix = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    assert torch.equal(to_model_range(torch.from_numpy(pix)), x)
    dims = pix.size
    result = {"cpu_model": cpu_model(), "cpu": cpu_info(),
              "torch_threads": args.threads, "n_images": args.n, "image_shape": list(pix.shape[1:]),
              "classic": classic_codecs(pix), "ddpm": []}
    for steps in args.steps:
        process = run.process if steps == run.process.num_timesteps else respaced(run.process, steps)
        t0 = time.perf_counter()
        blob, info = compress_array(run, pix, steps=steps, threads=args.threads)
        t_enc = time.perf_counter() - t0
        t0 = time.perf_counter()
        back, _ = decompress_bytes(run, blob)
        t_dec = time.perf_counter() - t0
        exact = int(sum(np.array_equal(a, b) for a, b in zip(back, pix, strict=True)))
        t0 = time.perf_counter()
        nll = evaluate_nll(model_fn_of(run.model), process, [x], seed=0)
        t_bound = time.perf_counter() - t0
        bound = float(nll.total.mean())
        row = {"steps": steps, "exact": exact, "file_bytes": len(blob), "file_bpd": 8 * len(blob) / dims,
               "net_bpd": info["net_bits"] / dims, "initial_bpd": info["initial_bits"] / dims,
               "header_bpd": 8 * info["header_bytes"] / dims, "bound_bpd": bound,
               "bound_se": float(nll.total.std(ddof=1) / np.sqrt(args.n)),
               "file_over_bound": 8 * len(blob) / dims / bound - 1,
               "encode_s_per_image": t_enc / args.n, "decode_s_per_image": t_dec / args.n,
               "bound_s_per_image": t_bound / args.n, "ticks": info["ticks"]}
        result["ddpm"].append(row)
        print(json.dumps(row), flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")  # after each row: partial runs keep theirs

    print(f"\n{args.n} Fashion-MNIST test images, {result['cpu_model']}\n")
    print(f"{'codec':<28}{'bits/dim':>10}{'vs bound':>10}{'exact':>8}{'enc s/img':>11}{'dec s/img':>11}")
    for r in result["ddpm"]:
        print(f"{'DDPM bits-back, ' + str(r['steps']) + ' steps':<28}{r['file_bpd']:>10.3f}"
              f"{100 * r['file_over_bound']:>9.1f}%{r['exact']:>5}/{args.n:<3}{r['encode_s_per_image']:>10.2f}"
              f"{r['decode_s_per_image']:>11.2f}")
        print(f"{'  (bound, eval nll)':<28}{r['bound_bpd']:>10.3f}")
        print(f"{'  (net of initial bits)':<28}{r['net_bpd']:>10.3f}")
    for name, v in result["classic"].items():
        print(f"{name + ' per image':<28}{v['per_image_bpd']:>10.3f}")
        print(f"{name + ' one batch':<28}{v['batch_bpd']:>10.3f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
