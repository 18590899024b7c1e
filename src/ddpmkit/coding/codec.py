"""The file format and the run-level front door: ``compress_array`` / ``decompress_bytes``.

Layout (little-endian)::

    offset  size  field
    0       6     magic b"DDPMBB"
    6       1     format version (1)
    7       16    model identity: sha256 of the weights, network config and diffusion config (first 16 bytes)
    23      16    fingerprint: sha256 of the network's float32 output on a fixed probe input
    39      4     T of the model, 4  steps coded with (== T, or a respacing of T into that many steps)
    47      4     image count,    2+2+2  channels, height, width
    57      1     torch threads,  1 network dtype (0 = float32)
    59      1+1+1 codec resolution, tail, wide;  2 lanes;  1 ramp
    65      4     seed words the decoder prepends,  4  payload words (n)
    73      4n    payload: the ANS stack's uint32 words
    73+4n   16    checksum: sha256 of everything before it (first 16 bytes)

Any mismatch (size, magic, version, checksum, model, fingerprint, shape) is a :class:`CodecError`.
"""

from __future__ import annotations

import hashlib
import json
import struct
from contextlib import contextmanager

import numpy as np
import torch

from ..diffusion.timesteps import respaced
from ..runs import model_fn_of
from .bitsback import BitsBackCodec, CodecError, CodecSettings

MAGIC = b"DDPMBB"
VERSION = 1
HEADER = struct.Struct("<6sB16s16sIIIHHHBBBBBHBII")
CHECK = 16
DTYPES = {0: torch.float32}


def model_identity(run) -> bytes:
    """16 bytes naming the weights and the configs that turn them into a model and a process."""
    h = hashlib.sha256()
    for name, tensor in sorted(run.model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    h.update(json.dumps(run.checkpoint.network, sort_keys=True).encode())
    d = run.config.diffusion
    h.update(json.dumps([d.schedule, d.timesteps, d.prediction, d.variance]).encode())
    return h.digest()[:16]


@torch.no_grad()
def fingerprint(model_fn, shape: tuple[int, ...], T: int) -> bytes:
    """sha256 of the network's output on a fixed probe (seeded noise at four time indices)."""
    x = torch.randn((4, *shape), generator=torch.Generator().manual_seed(20201219), dtype=torch.float32)
    t = torch.tensor([0, T // 3, (2 * T) // 3, T - 1], dtype=torch.long)
    out = model_fn(x, t).to(torch.float32).contiguous()
    return hashlib.sha256(out.numpy().tobytes()).digest()[:16]


@contextmanager
def torch_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _process(run, steps: int):
    T = run.process.num_timesteps
    if not 1 <= steps <= T:
        raise CodecError(f"steps must lie in 1..{T} for this model, got {steps}")
    return run.process if steps == T else respaced(run.process, steps)


def item_shape(run) -> tuple[int, int, int]:
    if not run.is_image:
        raise CodecError("the codec compresses images: this checkpoint's model generates points")
    return tuple(run.item_shape)


def check_images(run, pixels: np.ndarray) -> np.ndarray:
    shape = item_shape(run)
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8:
        raise CodecError(f"images must be uint8 pixels (0..255), got {getattr(pixels, 'dtype', type(pixels))}")
    if pixels.ndim != 4 or tuple(pixels.shape[1:]) != shape:
        raise CodecError(f"images have shape {tuple(pixels.shape[1:]) if pixels.ndim == 4 else pixels.shape}, "
                         f"but the model takes {shape[0]} x {shape[1]} x {shape[2]} (channels x height x width)")
    if pixels.shape[0] < 1:
        raise CodecError("no images to compress")
    return pixels


def compress_array(run, pixels: np.ndarray, *, steps: int | None = None,
                   settings: CodecSettings | None = None, threads: int | None = None,
                   progress=None) -> tuple[bytes, dict]:
    """Compress uint8 images (N, C, H, W) with a loaded run; returns the file's bytes and what they hold."""
    pixels = check_images(run, pixels)
    settings = settings or CodecSettings()
    T = run.process.num_timesteps
    steps = T if steps is None else int(steps)
    process = _process(run, steps)
    threads = threads or torch.get_num_threads()
    fn = model_fn_of(run.model)
    n, (c, h, w) = pixels.shape[0], pixels.shape[1:]
    with torch_threads(threads):
        fp = fingerprint(fn, (c, h, w), T)
        enc = BitsBackCodec(fn, process, settings).encode(pixels, progress=progress)
    s = settings
    head = HEADER.pack(MAGIC, VERSION, model_identity(run), fp, T, steps, n, c, h, w, threads, 0,
                       s.resolution, s.tail, s.wide, s.lanes, s.ramp, enc.seed_prefix, len(enc.payload))
    body = head + enc.payload.astype("<u4").tobytes()
    blob = body + hashlib.sha256(body).digest()[:CHECK]
    info = {"net_bits": enc.net_bits, "initial_bits": enc.initial_bits, "header_bytes": HEADER.size + CHECK,
            "ticks": enc.ticks, "steps": steps, "n": n, "shape": (c, h, w), **enc.stats}
    return blob, info


def read_header(blob: bytes) -> dict:
    """Parse and check a file's framing (magic, version, length, checksum) without a model."""
    if len(blob) < HEADER.size + CHECK or not blob.startswith(MAGIC):
        if blob[:len(MAGIC)] == MAGIC:
            raise CodecError(f"the file is truncated ({len(blob)} bytes, the header alone needs "
                             f"{HEADER.size + CHECK})")
        raise CodecError("not a ddpmkit compressed file (bad magic bytes)")
    fields = HEADER.unpack_from(blob)
    keys = ("magic", "version", "model", "fingerprint", "T", "steps", "n", "c", "h", "w", "threads", "dtype",
            "resolution", "tail", "wide", "lanes", "ramp", "seed_prefix", "words")
    hd = dict(zip(keys, fields, strict=True))
    if hd["version"] != VERSION:
        raise CodecError(f"unsupported file format version {hd['version']} (this ddpmkit reads {VERSION})")
    want = HEADER.size + 4 * hd["words"] + CHECK
    if len(blob) != want:
        raise CodecError(f"the file is {'truncated' if len(blob) < want else 'too long'}: {len(blob)} bytes, "
                         f"its header says {want}")
    if hashlib.sha256(blob[:-CHECK]).digest()[:CHECK] != blob[-CHECK:]:
        raise CodecError("the file is corrupt (checksum mismatch)")
    if hd["dtype"] not in DTYPES:
        raise CodecError(f"unknown network dtype code {hd['dtype']}")
    return hd


def decompress_bytes(run, blob: bytes, *, progress=None, callback=None) -> tuple[np.ndarray, dict]:
    """The exact inverse of :func:`compress_array`: (uint8 images (N, C, H, W), header fields)."""
    hd = read_header(blob)
    if hd["model"] != model_identity(run):
        raise CodecError("the file was compressed with another model (its model hash differs from this "
                         "checkpoint's); decode it with the checkpoint it was made with")
    shape = item_shape(run)
    if (hd["c"], hd["h"], hd["w"]) != shape or hd["T"] != run.process.num_timesteps:
        raise CodecError("the file's image shape or process does not match this checkpoint")
    process = _process(run, hd["steps"])
    settings = CodecSettings(resolution=hd["resolution"], tail=hd["tail"], wide=hd["wide"], lanes=hd["lanes"],
                             ramp=hd["ramp"])
    fn = model_fn_of(run.model)
    with torch_threads(hd["threads"]):
        if fingerprint(fn, shape, hd["T"]) != hd["fingerprint"]:
            raise CodecError(f"this machine's network output differs from the encoder's (fingerprint mismatch with "
                             f"{hd['threads']} torch threads): decoding would not be exact; decode on the "
                             "platform (CPU kind, torch version) that compressed the file")
        payload = np.frombuffer(blob, dtype="<u4", count=hd["words"], offset=HEADER.size).astype(np.uint32)
        pixels = BitsBackCodec(fn, process, settings).decode(payload, hd["seed_prefix"], hd["n"], shape,
                                                             progress=progress, callback=callback)
    return pixels, hd
