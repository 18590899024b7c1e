"""A prepared on-disk copy of an image set: decoded once, read by index without holding it in memory.

Layout of one prepared copy (a directory under the cache root)::

    images.npy      uint8 (N, C, S, S), a plain .npy file read with ``np.load(mmap_mode="c")``
    labels.npy      int64 (N,), only for labelled sets
    sources.json    every candidate source file as [relative path, size, mtime_ns] (diagnostics)
    manifest.json   format version, settings, counts, classes, skipped/upscaled counts and the
                    fingerprint of the sources; written last, so a copy without it is never used

Training touches only the rows of the batches it draws: the pages of ``images.npy`` live in the page
cache (file-backed memory the kernel may drop), not in the process's anonymous memory, so a set of
1.28 M images costs the trainer what a set of 1,000 does.

Freshness: a copy is reused while the fingerprint (relative path, size and mtime of every candidate
file, plus the settings: size, channels, resize method, format version) is unchanged; otherwise it is
rebuilt, with a message saying what changed. Building writes into a temporary directory next to the
final one (space is reserved up front with ``posix_fallocate``, so a full disk fails before any
decoding and never with a half-written file mapped into memory), then renames it into place; a killed
or failed build leaves only a ``.tmp-`` directory, which is never read and is removed by the next build.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..cache import user_cache_dir
from .dataset import DataError, Dataset

FORMAT_VERSION = 1
RESIZE_METHOD = "shorter side to S (PIL bicubic, antialiased; smaller images are upscaled), centre crop"
MANIFEST = "manifest.json"
SOURCES = "sources.json"
IMAGES = "images.npy"
LABELS = "labels.npy"
CHUNK = 256  # images per task sent to a worker process
ENV_CACHE = "DDPMKIT_PREPARED_DIR"


def default_cache_root() -> Path:
    """``$DDPMKIT_PREPARED_DIR``, else ``prepared/`` in the user cache (``$DDPMKIT_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/ddpmkit``, else ``~/.cache/ddpmkit``: ddpmkit.cache)."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    return user_cache_dir() / "prepared"


# --- the source: what is decoded, and its fingerprint ------------------------------------------

@dataclass(frozen=True)
class Source:
    """What a prepared copy is made from and with which settings."""

    name: str                    # registry name, e.g. "image-folder"
    root: Path                   # the image folder / data directory
    image_size: int
    channels: int | None         # None: native (RGB for folders)
    split: str = "train"

    def settings(self) -> dict:
        return {"format_version": FORMAT_VERSION, "name": self.name, "split": self.split,
                "root": str(self.root.resolve()), "image_size": self.image_size, "channels": self.channels,
                "resize": RESIZE_METHOD}

    def key(self) -> str:
        digest = hashlib.sha256(json.dumps(self.settings(), sort_keys=True).encode()).hexdigest()[:12]
        ch = f"{self.channels}ch" if self.channels else "native"
        return f"{self.name}-{self.split}-{self.image_size}px-{ch}-{digest}"


def scan_files(root: Path) -> list[tuple[str, int, int]]:
    """(relative posix path, size, mtime_ns) of every PNG/JPEG file under ``root``, sorted by path.

    The same files, in the same order, as :func:`ddpmkit.data.folder.find_images`."""
    from .folder import IMAGE_SUFFIXES

    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for fn in filenames:
            if os.path.splitext(fn)[1].lower() in IMAGE_SUFFIXES:
                full = os.path.join(dirpath, fn)
                try:
                    st = os.stat(full)
                except OSError:
                    continue
                if os.path.isfile(full):
                    out.append((Path(os.path.relpath(full, root)).as_posix(), st.st_size, st.st_mtime_ns))
    out.sort(key=lambda r: r[0].split("/"))  # = sorted Paths, without making 10^6 Path objects
    return out


def fingerprint(files: list[tuple[str, int, int]]) -> str:
    h = hashlib.sha256()
    for rel, size, mtime in files:
        h.update(f"{rel}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()


def _describe_change(old: list, new: list) -> str:
    a = {r[0]: tuple(r[1:]) for r in old}
    b = {r[0]: tuple(r[1:]) for r in new}
    added = len(b.keys() - a.keys())
    removed = len(a.keys() - b.keys())
    changed = sum(1 for k in a.keys() & b.keys() if a[k] != b[k])
    parts = [f"{n} {what}" for n, what in ((added, "added"), (removed, "removed"), (changed, "modified")) if n]
    return ", ".join(parts) or "file list reordered"


# --- decoding (runs in worker processes) ----------------------------------------------------------

def _decode_chunk(task) -> tuple[int, np.ndarray, np.ndarray, int]:
    """(start, images of the readable files, ok mask, how many were upscaled) for one chunk of paths."""
    from .folder import UNREADABLE, read_image

    start, root, rels, size, mode = task
    ok = np.zeros(len(rels), dtype=bool)
    arrays, upscaled = [], 0
    for i, rel in enumerate(rels):
        try:
            arr, (w, h) = read_image(Path(root) / rel, size, mode)
        except UNREADABLE:
            continue
        ok[i] = True
        upscaled += min(w, h) < size
        arrays.append(arr)
    c = 1 if mode == "L" else 3
    images = np.stack(arrays) if arrays else np.empty((0, c, size, size), dtype=np.uint8)
    return start, images, ok, upscaled


def _decode_pool(workers: int):
    """Worker processes for :func:`_decode_chunk`. Forked where possible: a spawned worker spends seconds
    importing torch (through this package) before decoding its first image, a forked one starts at once.
    The children run only PIL and numpy, never torch's thread pools, so forking a process that has
    started them is safe here."""
    import multiprocessing as mp

    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    return mp.get_context(method).Pool(workers)


def _reserve(path: Path, nbytes: int) -> None:
    """Allocate ``nbytes`` for ``path`` now, so that a full disk is an error here and not a SIGBUS later."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, nbytes)
    finally:
        os.close(fd)


def _npy_shrink(path: Path, rows: int) -> None:
    """Rewrite the .npy header with ``rows`` rows and cut the file (numpy pads headers for exactly this)."""
    with open(path, "r+b") as f:
        fmt = np.lib.format
        version = fmt.read_magic(f)
        read, write = ((fmt.read_array_header_1_0, fmt.write_array_header_1_0) if version == (1, 0)
                       else (fmt.read_array_header_2_0, fmt.write_array_header_2_0))
        shape, fortran, dtype = read(f)
        offset = f.tell()
        f.seek(0)
        write(f, {"descr": fmt.dtype_to_descr(dtype), "fortran_order": fortran, "shape": (rows, *shape[1:])})
        if f.tell() != offset:  # pragma: no cover - numpy's header padding makes this impossible
            raise RuntimeError("npy header length changed while shrinking")
        f.truncate(offset + rows * int(np.prod(shape[1:])) * dtype.itemsize)


def _disk_full(where: Path, needed: int | None) -> DataError:
    free = shutil.disk_usage(where).free
    need = "ran out of space" if needed is None else f"needs {needed / 2**20:.1f} MiB"
    return DataError(f"not enough disk space for the prepared copy in {where}: it {need}, "
                     f"{free / 2**20:.1f} MiB are free (set data.prepared_dir or ${ENV_CACHE} to a roomier "
                     "disk); nothing was kept")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_abandoned(cache_root: Path, key: str, log) -> None:
    """Remove our own ``.KEY.tmp-PID-*`` / ``.KEY.old-PID-*`` directories left by dead processes."""
    for p in cache_root.glob(f".{key}.*-*"):
        tag, _, rest = p.name[len(key) + 2:].partition("-")
        pid = rest.split("-", 1)[0]
        if tag in ("tmp", "old") and pid.isdigit() and not _pid_alive(int(pid)) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            log(f"removed {p} (left by an interrupted prepare)")


# --- building -----------------------------------------------------------------------------------

@dataclass
class PrepareReport:
    path: Path
    count: int
    skipped: int
    upscaled: int
    rebuilt: bool          # False: an up-to-date copy was reused
    seconds: float


def _folder_labels(rels: list[str]) -> tuple[np.ndarray | None, list[str] | None]:
    parts = [Path(r).parts for r in rels]
    classes = sorted({p[0] for p in parts}) if all(len(p) >= 2 for p in parts) else []
    if len(classes) < 2:
        return None, None
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[p[0]] for p in parts], dtype=np.int64), classes


def _check_source(src: Source) -> None:
    if src.name != "image-folder":
        raise DataError(f"a prepared copy is built from an image folder; {src.name!r} is held in memory "
                        "(set data.storage = 'memory')")
    if not src.root or not Path(src.root).is_dir():
        raise DataError(f"image folder {src.root} does not exist")
    if not src.image_size:
        raise DataError("image-folder needs image_size (images are resized and centre-cropped to it)")
    if src.channels not in (None, 1, 3):
        raise DataError(f"channels must be 1 or 3, got {src.channels}")


def _build(src: Source, files: list, tmp: Path, workers: int, progress: bool) -> dict:
    """Decode every file into ``tmp``; returns the manifest (not yet written)."""
    c = src.channels or 3
    mode = "L" if c == 1 else "RGB"
    s = src.image_size
    row = c * s * s
    n_total = len(files)
    images_path = tmp / IMAGES
    header = np.lib.format.open_memmap(images_path, mode="w+", dtype=np.uint8, shape=(n_total, c, s, s))
    offset = header.offset
    del header
    try:
        _reserve(images_path, offset + n_total * row)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _disk_full(tmp.parent, offset + n_total * row) from None
        raise
    # plain writes at offsets, not a writable memory map: the pages then count in the page cache only,
    # not in this process's resident set (a mapped 1.2 GB output showed as 1.4 GB peak RSS)
    out = open(images_path, "r+b")
    tasks = [(i, str(src.root), [f[0] for f in files[i:i + CHUNK]], s, mode) for i in range(0, n_total, CHUNK)]
    kept_rels: list[str] = []
    skipped: list[str] = []
    upscaled = 0
    pool = bar = None
    try:
        if workers > 0:
            pool = _decode_pool(workers)
            results = pool.imap(_decode_chunk, tasks)
        else:
            results = map(_decode_chunk, tasks)
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=n_total, desc=f"prepare {src.root.name}", unit="img", dynamic_ncols=True)
        for start, imgs, ok, up in results:
            out.seek(offset + len(kept_rels) * row)
            out.write(np.ascontiguousarray(imgs).data)
            rels = tasks[start // CHUNK][2]
            kept_rels += [r for r, good in zip(rels, ok, strict=True) if good]
            skipped += [r for r, good in zip(rels, ok, strict=True) if not good]
            upscaled += up
            if bar is not None:
                bar.update(len(rels))
    finally:
        out.close()
        if pool is not None:
            pool.terminate()
            pool.join()
        if bar is not None:
            bar.close()
    if not kept_rels:
        raise DataError(f"no readable PNG/JPEG images found under {src.root}"
                        + (f" ({len(skipped)} unreadable)" if skipped else ""))
    if len(kept_rels) < n_total:
        _npy_shrink(images_path, len(kept_rels))
    labels, classes = _folder_labels(kept_rels)
    if labels is not None:
        np.save(tmp / LABELS, labels)
    (tmp / SOURCES).write_text(json.dumps(files))
    return {**src.settings(), "count": len(kept_rels), "shape": [c, s, s], "classes": classes,
            "skipped": len(skipped), "skipped_examples": skipped[:10], "upscaled": upscaled,
            "source_files": n_total, "fingerprint": fingerprint(files),
            "bytes": os.path.getsize(images_path), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _fsync_dir_contents(path: Path) -> None:
    for f in path.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def read_manifest(path: Path) -> dict | None:
    try:
        return json.loads((Path(path) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def prepare(src: Source, *, cache_root: str | Path | None = None, workers: int = 0, progress: bool = False,
            force: bool = False, log: Callable[[str], None] = print) -> PrepareReport:
    """Build (or reuse) the prepared copy of ``src``; returns where it is and what it holds.

    ``workers``: decoding processes (0 decodes in this process). ``force`` rebuilds even when fresh.
    """
    _check_source(src)
    t0 = time.perf_counter()
    cache_root = Path(cache_root) if cache_root else default_cache_root()
    final = cache_root / src.key()
    files = scan_files(src.root)
    if not files:
        raise DataError(f"no PNG/JPEG images found under {src.root}")
    old = read_manifest(final)
    fp = fingerprint(files)
    if old is not None and not force and old.get("fingerprint") == fp and old.get("format_version") == FORMAT_VERSION:
        return PrepareReport(final, old["count"], old["skipped"], old["upscaled"], False, time.perf_counter() - t0)
    if old is not None and not force:
        try:
            before = json.loads((final / SOURCES).read_text())
        except (OSError, ValueError):
            before = []
        log(f"the source of {final} changed ({_describe_change(before, files)}); rebuilding the prepared copy")
    try:
        cache_root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the prepared-data directory {cache_root}: {e.strerror}") from None
    _remove_abandoned(cache_root, src.key(), log)
    tag = f"{os.getpid()}-{time.time_ns()}"
    tmp = cache_root / f".{src.key()}.tmp-{tag}"
    tmp.mkdir()
    try:
        manifest = _build(src, files, tmp, workers, progress)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        _fsync_dir_contents(tmp)
        if final.exists():
            retired = cache_root / f".{src.key()}.old-{tag}"
            final.rename(retired)
            tmp.rename(final)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            tmp.rename(final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _disk_full(cache_root, None) from None
        raise DataError(f"cannot write the prepared copy in {cache_root}: {e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return PrepareReport(final, manifest["count"], manifest["skipped"], manifest["upscaled"], True,
                         time.perf_counter() - t0)


def report_line(r: PrepareReport, src: Source) -> str:
    what = "prepared" if r.rebuilt else "reusing the prepared copy of"
    extra = []
    if r.skipped:
        extra.append(f"{r.skipped} unreadable file(s) skipped")
    if r.upscaled:
        extra.append(f"{r.upscaled} image(s) smaller than {src.image_size}x{src.image_size} upscaled (bicubic)")
    return (f"{what} {src.root}: {r.count} images at {src.image_size}x{src.image_size} in {r.path}"
            + (f" ({'; '.join(extra)})" if extra else ""))


# --- reading ------------------------------------------------------------------------------------

def open_prepared(path: str | Path, *, name: str = "image-folder", n: int | None = None, seed: int = 0) -> Dataset:
    """A :class:`Dataset` whose images are a read-only memory map of ``images.npy`` (labels in memory).

    ``n`` takes a seeded random subset (the same one the in-memory loader takes), read into memory.
    """
    from .dataset import subset_indices

    path = Path(path)
    m = read_manifest(path)
    if m is None or m.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{path} is not a prepared copy of format {FORMAT_VERSION} (no valid {MANIFEST})")
    # copy-on-write mapping: torch gets a writable array without a copy; nothing is ever written back
    x = np.load(path / IMAGES, mmap_mode="c")
    if x.dtype != np.uint8 or x.shape != (m["count"], *m["shape"]):
        raise DataError(f"{path / IMAGES} holds {x.dtype} {x.shape}, the manifest says {m['count']} x {m['shape']}")
    y = np.load(path / LABELS) if m.get("classes") else None
    keep = subset_indices(len(x), n, seed)
    if keep is not None:
        x, y = np.ascontiguousarray(x[keep]), (None if y is None else y[keep])
    classes = tuple(m["classes"]) if m.get("classes") else None
    return Dataset(x=torch.from_numpy(x), y=None if y is None else torch.from_numpy(y),
                   num_classes=None if classes is None else len(classes), kind="image", name=name,
                   split=m.get("split", "train"), class_names=classes, source=f"{m['root']} (prepared: {path})")


def prepared_info(path: str | Path) -> dict:
    """The manifest plus the on-disk size and freshness of a prepared copy."""
    path = Path(path)
    m = read_manifest(path)
    if m is None:
        raise DataError(f"{path} is not a prepared copy (no {MANIFEST})")
    root = Path(m["root"])
    fresh = root.is_dir() and fingerprint(scan_files(root)) == m.get("fingerprint")
    disk = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    return {**m, "path": str(path), "disk_bytes": disk, "fresh": fresh}


# --- the front door used by the trainer and `ddpmkit data` ----------------------------------------

STORAGES = ("auto", "memory", "prepared")


def resolve_storage(name: str, storage: str) -> str:
    """'memory' or 'prepared' for a dataset name: ``auto`` prepares image folders, keeps the rest in memory."""
    from .registry import _normalise

    if storage not in STORAGES:
        raise DataError(f"unknown data.storage {storage!r}; valid: {', '.join(STORAGES)}")
    key = _normalise(name)
    if storage == "auto":
        return "prepared" if key == "image-folder" else "memory"
    if storage == "prepared" and key != "image-folder":
        raise DataError(f"data.storage = 'prepared' needs data.name = 'image-folder' (got {key!r}, which is "
                        "small enough to be held in memory; use storage 'memory' or 'auto')")
    return storage


def folder_source(data_dir, image_size, channels) -> Source:
    """The :class:`Source` of an image folder from config-style options ("" / 0 mean unset)."""
    from .dataset import check_int_option

    if not data_dir:
        raise DataError("image-folder needs --data-dir: a folder of PNG/JPEG images (searched recursively)")
    size = check_int_option("image_size", image_size)
    if not size:
        raise DataError("image-folder needs image_size (images are resized and centre-cropped to it)")
    src = Source("image-folder", Path(data_dir), size, check_int_option("channels", channels, (1, 3)))
    _check_source(src)
    return src


def default_workers(workers: int) -> int:
    return workers if workers > 0 else max(1, os.cpu_count() or 1)
