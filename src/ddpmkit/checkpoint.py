"""Checkpoints that survive a kill at any moment and never unpickle anything.

Layout of a run directory::

    RUN/checkpoints/step_00001000/model.safetensors   weights
                                  ema.safetensors     EMA weights
                                  optim.safetensors   optimizer tensors (+ timestep-sampler history)
                                  state.json          config, network config, step, version, optimizer
                                                      hyper-parameters, extra state, the files and sizes
    RUN/checkpoints/latest                            name of the newest complete checkpoint

A checkpoint is written into a temporary directory, every file fsynced, then renamed into place;
``latest`` is replaced atomically afterwards, and only then is anything old removed.  A re-save of a
step that is already on disk goes to a fresh name (``step_00001000.1``), so the previous copy stays
until ``latest`` points at the new one.  A kill at any point leaves ``latest`` naming a complete
checkpoint (the old or the new one); the next save (and the trainer at start) removes temporary
files, incomplete ``step_*`` directories and superseded copies.  Only the last ``keep`` steps are kept.
``load_checkpoint`` refuses a checkpoint whose files do not match what its ``state.json`` records.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as tensors_to_bytes

from .errors import TrainingDiverged, UserError

FORMAT_VERSION = 1
PREFIX = "step_"
_NAME = re.compile(rf"{PREFIX}(\d+)(?:\.(\d+))?")
_TEMPORARY = (".tmp-*", ".latest-*", ".old-*")
STATE_KEYS = ("format_version", "step", "config", "network")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_bytes_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        os.chmod(path, 0o644)  # whatever the umask: weights are as shareable as the JSON beside them
        f.flush()
        os.fsync(f.fileno())


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> int:
    """Write ``tensors`` as safetensors (through Python's ``open``, so every write is one we control) and
    fsync; returns the size in bytes."""
    data = tensors_to_bytes({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    _write_bytes_synced(path, data)
    return len(data)


def _load_tensors(path: Path, device: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError) as e:
        raise UserError(f"cannot read {path}: {e} (truncated or not a safetensors file)") from None
    except RuntimeError as e:  # e.g. a device that does not exist
        raise UserError(f"cannot load {path} onto device {device!r}: {e}") from None


def first_nonfinite(*tensor_dicts: dict[str, torch.Tensor] | None) -> str | None:
    """The name of the first floating-point tensor holding a NaN or an infinity, or None."""
    for tensors in tensor_dicts:
        for name, v in (tensors or {}).items():
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
                return name
    return None


# --- optimizer state <-> (tensors, JSON) ------------------------------------------------------

def optimizer_to_tensors(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for idx, per_param in state["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if not name.startswith("state."):
            continue
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for name, value in meta.get("scalars", {}).items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


@dataclass
class Checkpoint:
    step: int
    config: dict
    network: dict
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None
    optimizer: dict | None = None
    extra: dict = field(default_factory=dict)               # JSON-able trainer state
    extra_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    path: Path | None = None


def _step_key(p: Path) -> tuple[int, int] | None:
    """(step, generation) of a ``step_*`` name; None for anything else."""
    m = _NAME.fullmatch(p.name)
    return (int(m.group(1)), int(m.group(2) or 0)) if m else None


def _step_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if _step_key(p) is not None and p.is_dir()), key=_step_key)


def save_checkpoint(run_dir: str | Path, ckpt: Checkpoint, keep: int = 3) -> Path:
    """Write ``ckpt`` under ``run_dir/checkpoints``, point ``latest`` at it, then prune to ``keep`` steps.

    Refuses (``TrainingDiverged``) weights or optimizer state holding NaN or infinity: the last finite
    checkpoint stays the latest."""
    bad = first_nonfinite(ckpt.model, ckpt.ema, ckpt.optimizer and optimizer_to_tensors(ckpt.optimizer)[0])
    if bad is not None:
        raise TrainingDiverged(f"{bad} became NaN or infinite by step {ckpt.step}; not saved, the last finite "
                               f"checkpoint in {Path(run_dir) / 'checkpoints'} is kept (lower train.lr or enable "
                               "train.grad_clip)")
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    clean_checkpoints(root)
    generation = 1 + max((_step_key(p)[1] for p in _step_dirs(root) if _step_key(p)[0] == ckpt.step), default=-1)
    name = f"{PREFIX}{ckpt.step:08d}" + (f".{generation}" if generation else "")
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private
    try:
        files = {"model.safetensors": _save_tensors(ckpt.model, tmp / "model.safetensors")}
        if ckpt.ema is not None:
            files["ema.safetensors"] = _save_tensors(ckpt.ema, tmp / "ema.safetensors")
        opt_meta = None
        opt_tensors: dict[str, torch.Tensor] = {}
        if ckpt.optimizer is not None:
            opt_tensors, opt_meta = optimizer_to_tensors(ckpt.optimizer)
        opt_tensors.update({f"extra.{k}": v for k, v in ckpt.extra_tensors.items()})
        if opt_tensors:
            files["optim.safetensors"] = _save_tensors(opt_tensors, tmp / "optim.safetensors")
        state = {"format_version": FORMAT_VERSION, "step": ckpt.step, "config": ckpt.config,
                 "network": ckpt.network, "optimizer": opt_meta, "extra": ckpt.extra,
                 "has_ema": ckpt.ema is not None, "files": files}
        _write_bytes_synced(tmp / "state.json", json.dumps(state, indent=1).encode())
        _fsync_dir(tmp)
        final = root / name
        os.rename(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _point_latest(root, name)
    _prune(root, keep, protect=name)
    return final


def _point_latest(root: Path, name: str) -> None:
    latest_tmp = root / f".latest-{os.getpid()}"
    _write_bytes_synced(latest_tmp, name.encode())
    os.replace(latest_tmp, root / "latest")
    _fsync_dir(root)


def list_checkpoints(root: Path) -> list[Path]:
    """The complete checkpoints (with ``state.json``) in a run's ``checkpoints/``, oldest first."""
    return [p for p in _step_dirs(root) if (p / "state.json").is_file()]


def _latest_name(root: Path) -> str | None:
    try:
        return (root / "latest").read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def clean_checkpoints(root: str | Path) -> list[Path]:
    """Remove what a killed save leaves behind in ``root`` (a run's ``checkpoints/``): temporary
    directories and files, ``step_*`` directories without ``state.json`` (a prune cut short), and older
    copies of a step that was saved again.  Never the checkpoint ``latest`` names.  Returns what went."""
    root = Path(root)
    if not root.is_dir():
        return []
    latest = _latest_name(root)
    junk = [p for pattern in _TEMPORARY for p in root.glob(pattern)]
    junk += [p for p in _step_dirs(root) if not (p / "state.json").is_file() and p.name != latest]
    by_step: dict[int, list[Path]] = {}
    for p in list_checkpoints(root):
        by_step.setdefault(_step_key(p)[0], []).append(p)
    for copies in by_step.values():
        keep = next((p for p in copies if p.name == latest), copies[-1])
        junk += [p for p in copies if p != keep]
    for p in junk:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return junk


def _prune(root: Path, keep: int, protect: str) -> None:
    clean_checkpoints(root)
    if keep <= 0:
        return
    ckpts = [p for p in list_checkpoints(root) if p.name != protect]
    for p in ckpts[: max(0, len(ckpts) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a run directory, its checkpoints/ folder, or the checkpoint itself."""
    p = Path(path)
    if (p / "state.json").is_file():
        return p
    if p.is_file():
        raise UserError(f"{p} is a file; give a run directory or a checkpoint directory")
    root = p / "checkpoints" if (p / "checkpoints").is_dir() else p
    if not root.is_dir():
        raise UserError(f"no run or checkpoint at {p}")
    latest = _latest_name(root)
    if latest and _NAME.fullmatch(latest) and (root / latest / "state.json").is_file():
        return root / latest
    found = list_checkpoints(root)
    if not found:
        raise UserError(f"no checkpoint found in {root}")
    return found[-1]


def _expected_files(state: dict) -> dict[str, int | None]:
    """File name -> size that a checkpoint must hold (sizes from state.json; None for older checkpoints
    that did not record them)."""
    recorded = state.get("files")
    if isinstance(recorded, dict):
        expected = dict(recorded)
    else:
        expected = {} if state.get("weights_only") else {"model.safetensors": None}
        if state.get("has_ema"):
            expected["ema.safetensors"] = None
    if state.get("optimizer") is not None:
        expected.setdefault("optim.safetensors", None)
    return expected


def _read_state(ckpt_dir: Path) -> dict:
    try:
        state = json.loads((ckpt_dir / "state.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"unreadable checkpoint {ckpt_dir}: {e}") from None
    if not isinstance(state, dict):
        raise UserError(f"{ckpt_dir / 'state.json'} is not a JSON object")
    missing = [k for k in STATE_KEYS if k not in state]
    if missing:
        raise UserError(f"{ckpt_dir / 'state.json'} lacks {', '.join(missing)}; not a ddpmkit checkpoint")
    if state["format_version"] != FORMAT_VERSION:
        raise UserError(f"checkpoint {ckpt_dir} has format version {state['format_version']}, "
                        f"this ddpmkit reads version {FORMAT_VERSION}")
    step = state["step"]
    if (isinstance(step, bool) or not isinstance(step, int) or step < 0
            or not all(isinstance(state[k], dict) for k in ("config", "network"))):
        raise UserError(f"{ckpt_dir / 'state.json'}: step must be an integer >= 0 and config, network objects")
    for name, size in _expected_files(state).items():
        f = ckpt_dir / name
        if not f.is_file():
            raise UserError(f"checkpoint {ckpt_dir} is incomplete: state.json records {name}, which is missing")
        if size is not None and f.stat().st_size != size:
            raise UserError(f"checkpoint {ckpt_dir} is damaged: {name} has {f.stat().st_size} bytes, "
                            f"state.json records {size}")
    return state


def read_state(path: str | Path) -> dict:
    """The checked ``state.json`` of the checkpoint ``path`` names (no tensors are read)."""
    return _read_state(find_checkpoint(path))


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu",
                    with_optimizer: bool = True) -> Checkpoint:
    ckpt_dir = find_checkpoint(path)
    state = _read_state(ckpt_dir)
    device = str(map_location)
    ema = _load_tensors(ckpt_dir / "ema.safetensors", device) if state.get("has_ema") else None
    model_file = ckpt_dir / "model.safetensors"
    if model_file.is_file():
        model = _load_tensors(model_file, device)
    elif ema is not None and state.get("weights_only"):  # an exported EMA-only checkpoint
        model = ema
    else:
        raise UserError(f"checkpoint {ckpt_dir} has no model.safetensors")
    optimizer, extra_tensors = None, {}
    opt_file = ckpt_dir / "optim.safetensors"
    if with_optimizer and opt_file.is_file():
        tensors = _load_tensors(opt_file, device)
        extra_tensors = {k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")}
        if state.get("optimizer") is not None:
            try:
                optimizer = optimizer_from_tensors(tensors, state["optimizer"])
            except (KeyError, ValueError, TypeError, AttributeError) as e:
                raise UserError(f"checkpoint {ckpt_dir}: malformed optimizer state in state.json ({e!r})") from None
    return Checkpoint(step=state["step"], config=state["config"], network=state["network"], model=model,
                      ema=ema, optimizer=optimizer, extra=state.get("extra") or {}, extra_tensors=extra_tensors,
                      path=ckpt_dir)


def is_export(path: str | Path) -> bool:
    """True for a directory that ``export_checkpoint`` wrote: a ``state.json`` marked ``weights_only`` and its
    one weights file, nothing else."""
    p = Path(path)
    if p.is_symlink() or not p.is_dir():
        return False
    names = {q.name for q in p.iterdir()}
    if names not in ({"state.json", "ema.safetensors"}, {"state.json", "model.safetensors"}):
        return False
    try:
        state = json.loads((p / "state.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(state, dict) and state.get("weights_only") is True


def _check_export_target(out: Path, source: Path, force: bool) -> bool:
    """Whether ``out`` is an earlier export to replace; raises unless writing there loses nothing."""
    target, src, cwd = out.resolve(), source.resolve(), Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise UserError(f"--out {out} is the current directory or one of its parents; choose a new directory")
    inside_run = src.parent.name == "checkpoints" and src.parent in target.parents
    if target == src or target in src.parents or inside_run:
        raise UserError(f"--out {out} would overlap the checkpoint being exported ({source}); choose a directory "
                        "outside the run")
    if not (out.exists() or out.is_symlink()):
        return False
    if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
        return False
    if not force:
        raise UserError(f"{out} exists and is not empty; choose another --out or pass --force (which replaces "
                        "only an earlier export)")
    if not is_export(out):
        raise UserError(f"--force replaces only an earlier export (state.json + one weights file); {out} is not "
                        "one, nothing was changed")
    return True


def export_checkpoint(path: str | Path, out_dir: str | Path, *, use_ema: bool = True, force: bool = False) -> Path:
    """Write a slim, inference-only copy of a checkpoint: one set of weights (the EMA weights unless
    ``use_ema`` is false) and ``state.json``; no optimizer, no second copy.  ``load_checkpoint`` reads it
    (the EMA weights then serve as both the raw and the EMA weights).  Never writes over anything but an
    empty directory or, with ``force``, an earlier export (``is_export``); never the current directory,
    its parents, or anything overlapping the source run."""
    ckpt = load_checkpoint(path, with_optimizer=False)
    out = Path(out_dir)
    replace = _check_export_target(out, ckpt.path, force)
    if use_ema and ckpt.ema is None:
        raise UserError(f"checkpoint {ckpt.path} has no EMA weights; export the raw weights with --raw")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
    try:
        name = "ema.safetensors" if use_ema else "model.safetensors"
        size = _save_tensors(ckpt.ema if use_ema else ckpt.model, tmp / name)
        state = {"format_version": FORMAT_VERSION, "step": ckpt.step, "config": ckpt.config,
                 "network": ckpt.network, "optimizer": None, "has_ema": use_ema, "weights_only": True,
                 "files": {name: size},
                 "extra": {"exported_from": str(ckpt.path), "weights": "ema" if use_ema else "raw"}}
        _write_bytes_synced(tmp / "state.json", json.dumps(state, indent=1).encode())
        _fsync_dir(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp made it private; an exported model is meant to be shared
        aside = out.parent / f".old-{out.name}-{os.getpid()}"
        if replace:  # the earlier export goes aside until the new one is in place
            os.rename(out, aside)
        os.rename(tmp, out)
        _fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if replace:
        shutil.rmtree(aside, ignore_errors=True)
    return out
