"""``ddpmkit compress`` / ``ddpmkit decompress``: parse options, read and write files, call the codec."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from ..argtypes import int_list, positive_int
from ..errors import UserError


def _bar(args, total: int, desc: str):
    if args.no_progress:
        return None
    from tqdm import tqdm

    return lambda it: tqdm(it, total=total, desc=desc, unit="tick", leave=False, file=sys.stderr)


# --- reading images --------------------------------------------------------------------------

def _read_png(path: Path, channels: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            have = 1 if mode in ("L", "1", "I", "I;16") else 3 if mode in ("RGB", "P") else None
            if have is None:
                raise UserError(f"{path}: image mode {mode} is not 8-bit grey or RGB")
            if have != channels:
                raise UserError(f"{path} has {have} channel{'s' if have > 1 else ''}, the model takes {channels}")
            if mode in ("I", "I;16"):
                raise UserError(f"{path}: {mode} is not 8-bit")
            arr = np.asarray(img.convert("L" if channels == 1 else "RGB"))
    except (OSError, UnidentifiedImageError) as e:
        raise UserError(f"cannot read image {path}: {e}") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def read_images(paths: list[str], shape: tuple[int, int, int]) -> np.ndarray:
    """PNG files, folders of PNG files (sorted by name) or one .npy array -> uint8 (N, C, H, W)."""
    c, h, w = shape
    if len(paths) == 1 and paths[0].endswith(".npy"):
        try:
            arr = np.load(paths[0], allow_pickle=False)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {paths[0]}: {e}") from None
        if arr.dtype != np.uint8:
            raise UserError(f"{paths[0]} holds {arr.dtype}; the codec takes uint8 pixels (0..255)")
        if arr.ndim == 3 and c == 1:
            arr = arr[:, None]
        if arr.ndim != 4 or tuple(arr.shape[1:]) != shape:
            raise UserError(f"{paths[0]} has shape {arr.shape}; the model takes (N, {c}, {h}, {w})")
        return np.ascontiguousarray(arr)
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() == ".png")
            if not found:
                raise UserError(f"no .png files in {p}")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"no such file or folder: {p}")
    out = []
    for f in files:
        a = _read_png(f, c)
        if a.shape[1:] != (h, w):
            raise UserError(f"{f} is {a.shape[2]} x {a.shape[1]} pixels, the model takes {w} x {h}")
        out.append(a)
    return np.stack(out)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --- commands --------------------------------------------------------------------------------

def _settings(args):
    from .bitsback import CodecSettings

    return CodecSettings(resolution=args.resolution, tail=args.tail, lanes=args.lanes, ramp=args.ramp)


def cmd_compress(args) -> int:
    from ..runs import load_run
    from .bitsback import schedule
    from .codec import compress_array, item_shape

    out = Path(args.out)
    if out.exists() and not args.force:
        raise UserError(f"{out} exists; pass --force to replace it")
    if out.exists() and out.is_dir():
        raise UserError(f"{out} is a folder; --out names the compressed file")
    run = load_run(args.checkpoint, use_ema=not args.no_ema)
    pixels = read_images(args.images, item_shape(run))
    settings = _settings(args)
    steps = args.steps or run.process.num_timesteps
    n = pixels.shape[0]
    bar = _bar(args, len(schedule(n, steps, settings.lanes, settings.ramp)), "compress")
    blob, info = compress_array(run, pixels, steps=steps, settings=settings, threads=args.threads, progress=bar)
    dims = pixels.size
    _atomic_write(out, blob)
    print(f"wrote {out}: {n} image{'s' if n > 1 else ''} of {' x '.join(map(str, pixels.shape[1:]))}, "
          f"{len(blob)} bytes = {8 * len(blob) / dims:.4f} bits/dim ({info['steps']} steps)")
    print(f"  bits-back code {info['net_bits'] / dims:.4f} + initial bits {info['initial_bits'] / dims:.4f} "
          f"+ header {8 * info['header_bytes'] / dims:.4f} bits/dim")
    if args.bound:
        _print_bound(run, pixels, steps)
    return 0


def _print_bound(run, pixels, steps: int) -> None:
    import torch

    from ..data import to_model_range
    from ..diffusion.timesteps import respaced
    from ..evaluation.likelihood import evaluate_nll
    from ..runs import model_fn_of

    process = run.process if steps == run.process.num_timesteps else respaced(run.process, steps)
    nll = evaluate_nll(model_fn_of(run.model), process, [to_model_range(torch.from_numpy(pixels))], seed=0)
    print(f"  the model's bound on these images (eval nll, {steps} steps): {nll.total.mean():.4f} bits/dim")


def cmd_decompress(args) -> int:
    from ..runs import load_run
    from .codec import decompress_bytes, read_header

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not args.force)):
        raise UserError(f"{out} exists and is not an empty folder; pass --force to write into it"
                        if out.is_dir() else f"{out} exists and is not a folder")
    if args.npy and Path(args.npy).exists() and not args.force:
        raise UserError(f"{args.npy} exists; pass --force to replace it")
    try:
        blob = Path(args.file).read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {args.file}: {e}") from None
    hd = read_header(blob)
    run = load_run(args.checkpoint, use_ema=not args.no_ema)
    recorder = _ProgressRecorder(run, hd, args) if args.progress else None
    from .bitsback import schedule

    bar = _bar(args, len(schedule(hd["n"], hd["steps"], hd["lanes"], hd["ramp"])), "decompress")
    pixels, hd = decompress_bytes(run, blob, progress=bar, callback=recorder)
    out.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    width = max(5, len(str(len(pixels) - 1)))
    for i, img in enumerate(pixels):
        Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)).save(out / f"{i:0{width}d}.png")
    dims = pixels.size
    print(f"decoded {len(pixels)} images into {out} ({8 * len(blob) / dims:.4f} bits/dim, {hd['steps']} steps)")
    if args.npy:
        np.save(args.npy, pixels)
        print(f"wrote {args.npy} (uint8, shape {pixels.shape})")
    if recorder is not None:
        print(f"wrote {recorder.save()} (x_t and predicted x0 as the receiver gets x_t, "
              f"t = {', '.join(map(str, recorder.labels))})")
    return 0


class _ProgressRecorder:
    """Collects (x_t, predicted x0) of the first images at the requested time indices while decoding."""

    def __init__(self, run, hd, args):
        import torch

        from .codec import _process

        T = run.process.num_timesteps
        bad = [t for t in args.progress if not 0 <= t < T]
        if bad:
            raise UserError(f"--progress indices must lie in 0..{T - 1}, got {bad}")
        tmap = _process(run, hd["steps"]).timestep_map.cpu()
        # each requested (original) index -> the kept step nearest to it
        self.kept = {int(torch.argmin((tmap - t).abs())): int(tmap[torch.argmin((tmap - t).abs())])
                     for t in args.progress}
        self.n = min(args.progress_n, hd["n"])
        self.snaps: dict[int, dict[int, tuple]] = {k: {} for k in self.kept}
        self.path = Path(args.progress_out or Path(args.out).with_name(Path(args.out).name + "_progress.png"))

    def __call__(self, ids, t, x_t, x0_pred):
        for j, (i, tj) in enumerate(zip(ids.tolist(), t.tolist(), strict=True)):
            if i < self.n and tj in self.snaps:
                self.snaps[tj][i] = (x_t[j], x0_pred[j].clamp(-1, 1))

    @property
    def labels(self) -> list[int]:
        return [self.kept[k] for k in sorted(self.kept, reverse=True)]

    def save(self) -> Path:
        import torch

        from .. import viz

        cols = []
        for k in sorted(self.kept, reverse=True):
            got = self.snaps[k]
            cols.append((self.kept[k], torch.stack([got[i][0] for i in range(self.n)]),
                         torch.stack([got[i][1] for i in range(self.n)])))
        viz.save_trajectory(cols, self.path, max_samples=self.n,
                            title="receiving: x_t and the predicted x0 (bits-back delivers x_T first)")
        return self.path


CKPT = "run directory, checkpoint directory or pretrained:NAME"
FLAG = {"action": "store_true"}

# (flags, argparse keywords) of each command, in --help order
COMPRESS = [
    (("images",), {"nargs": "+", "help": "PNG files, folders of PNG files, or one .npy uint8 array (N, C, H, W)"}),
    (("--checkpoint",), {"required": True, "help": CKPT}),
    (("--out",), {"required": True, "help": "the compressed file to write"}),
    (("--steps",), {"type": positive_int, "help": "code with the process respaced to this many steps (default: "
                                                  "all T; fewer is faster and larger)"}),
    (("--threads",), {"type": positive_int, "help": "torch threads (recorded; the decoder uses the same; "
                                                    "default: torch's current)"}),
    (("--resolution",), {"type": int, "default": 2,
                         "help": "latent grid: 2^r to 2^(r+1) steps per forward-step std (default 2)"}),
    (("--tail",), {"type": int, "default": 5, "help": "popped Gaussians are cut at >= this many std (default 5)"}),
    (("--lanes",), {"type": int, "default": 128, "help": "most images coded side by side (default 128)"}),
    (("--ramp",), {"type": int, "default": 4, "help": "images finished per extra lane (default 4; 0 = all lanes "
                                                      "at once: fewer ticks, far more initial bits)"}),
    (("--bound",), {**FLAG, "help": "also evaluate the model's bound (eval nll) on these images: one more pass"}),
    (("--force",), {**FLAG, "help": "replace an existing --out"}),
    (("--no-ema",), {**FLAG, "help": "use the raw weights instead of the EMA weights"}),
    (("--no-progress",), {**FLAG, "help": "no progress bar"}),
]
DECOMPRESS = [
    (("file",), {"help": "the compressed file"}),
    (("--checkpoint",), {"required": True, "help": "the checkpoint the file was compressed with"}),
    (("--out",), {"required": True, "help": "output folder (must be new or empty, unless --force)"}),
    (("--npy",), {"help": "also write the images as one uint8 .npy array (N, C, H, W)"}),
    (("--progress",), {"type": int_list, "metavar": "T1,T2,...",
                       "help": "draw x_t and the predicted x0 when the receiver has x_t, at these time indices, "
                               "e.g. 999,750,500,250,0"}),
    (("--progress-out",), {"help": "that picture (default: OUT_progress.png)"}),
    (("--progress-n",), {"type": positive_int, "default": 4, "help": "images in the progress picture (default 4)"}),
    (("--force",), {**FLAG, "help": "write into a non-empty --out, replace --npy"}),
    (("--no-ema",), {**FLAG, "help": "use the raw weights (if the file was made with them)"}),
    (("--no-progress",), {**FLAG, "help": "no progress bar"}),
]


def add_coding_parsers(sub) -> None:
    """Register ``compress`` and ``decompress`` on the main parser's subcommands."""
    commands = [
        ("compress", cmd_compress, COMPRESS, "compress 8-bit images losslessly with a trained model (bits-back ANS)",
         "Compress images into one file with the model's reverse process (DDPM Algorithm 3, bits-back with "
         "ANS). The file decodes exactly only with the same checkpoint on the same platform (its header checks "
         "both)."),
        ("decompress", cmd_decompress, DECOMPRESS, "decode a compressed file back into the exact images",
         "Decode a file written by `ddpmkit compress` (DDPM Algorithm 4) into PNG files 00000.png, "
         "00001.png, ... in --out."),
    ]
    for name, func, options, short, long in commands:
        p = sub.add_parser(name, help=short, description=long)
        for flags, kwargs in options:
            p.add_argument(*flags, **kwargs)
        p.set_defaults(func=func)
