"""Checkpoints that survive a crash at any moment and never unpickle anything.

Layout of a run directory::

    RUN/checkpoints/step_00001000/model.safetensors   weights
                                  ema.safetensors     EMA weights
                                  optim.safetensors   optimizer tensors (+ timestep-sampler history)
                                  state.json          config, network config, step, version, optimizer
                                                      hyper-parameters, extra state
    RUN/checkpoints/latest                            name of the newest complete checkpoint

A checkpoint is written into a temporary directory, every file fsynced, then renamed into place;
``latest`` is replaced atomically afterwards.  A crash leaves either the old or the new ``latest``,
both complete.  Only the last ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import UserError

FORMAT_VERSION = 1
PREFIX = "step_"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_bytes_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))
    os.chmod(path, 0o644)  # safetensors writes 0600; weights are as shareable as the JSON beside them
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


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


def save_checkpoint(run_dir: str | Path, ckpt: Checkpoint, keep: int = 3) -> Path:
    """Write ``ckpt`` atomically under ``run_dir/checkpoints`` and point ``latest`` at it."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"{PREFIX}{ckpt.step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private
    try:
        _save_tensors(ckpt.model, tmp / "model.safetensors")
        if ckpt.ema is not None:
            _save_tensors(ckpt.ema, tmp / "ema.safetensors")
        opt_meta = None
        opt_tensors: dict[str, torch.Tensor] = {}
        if ckpt.optimizer is not None:
            opt_tensors, opt_meta = optimizer_to_tensors(ckpt.optimizer)
        opt_tensors.update({f"extra.{k}": v for k, v in ckpt.extra_tensors.items()})
        if opt_tensors:
            _save_tensors(opt_tensors, tmp / "optim.safetensors")
        state = {"format_version": FORMAT_VERSION, "step": ckpt.step, "config": ckpt.config,
                 "network": ckpt.network, "optimizer": opt_meta, "extra": ckpt.extra,
                 "has_ema": ckpt.ema is not None}
        _write_bytes_synced(tmp / "state.json", json.dumps(state, indent=1).encode())
        _fsync_dir(tmp)
        final = root / name
        if final.exists():  # re-saving the same step (e.g. a stop right after a periodic save)
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    latest_tmp = root / f".latest-{os.getpid()}"
    _write_bytes_synced(latest_tmp, name.encode())
    os.replace(latest_tmp, root / "latest")
    _fsync_dir(root)
    _prune(root, keep, protect=name)
    return final


def _complete_checkpoints(root: Path) -> list[Path]:
    return sorted((p for p in root.glob(f"{PREFIX}*") if (p / "state.json").is_file()), key=lambda p: p.name)


def _prune(root: Path, keep: int, protect: str) -> None:
    for p in root.glob(".tmp-*"):  # leftovers of a crash during an earlier save
        shutil.rmtree(p, ignore_errors=True)
    if keep <= 0:
        return
    ckpts = [p for p in _complete_checkpoints(root) if p.name != protect]
    for p in ckpts[: max(0, len(ckpts) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a run directory, its checkpoints/ folder, or the checkpoint itself."""
    p = Path(path)
    if (p / "state.json").is_file():
        return p
    root = p / "checkpoints" if (p / "checkpoints").is_dir() else p
    if not root.is_dir():
        raise UserError(f"no run or checkpoint at {p}")
    latest = root / "latest"
    if latest.is_file():
        candidate = root / latest.read_text().strip()
        if (candidate / "state.json").is_file():
            return candidate
    found = _complete_checkpoints(root)
    if not found:
        raise UserError(f"no checkpoint found in {root}")
    return found[-1]


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu",
                    with_optimizer: bool = True) -> Checkpoint:
    ckpt_dir = find_checkpoint(path)
    try:
        state = json.loads((ckpt_dir / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"unreadable checkpoint {ckpt_dir}: {e}") from None
    if state.get("format_version") != FORMAT_VERSION:
        raise UserError(f"checkpoint {ckpt_dir} has format version {state.get('format_version')}, "
                        f"this ddpmkit reads version {FORMAT_VERSION}")
    device = str(map_location)
    ema = load_file(str(ckpt_dir / "ema.safetensors"), device=device) if state.get("has_ema") else None
    model_file = ckpt_dir / "model.safetensors"
    if model_file.is_file():
        model = load_file(str(model_file), device=device)
    elif ema is not None and state.get("weights_only"):  # an exported EMA-only checkpoint
        model = ema
    else:
        raise UserError(f"checkpoint {ckpt_dir} has no model.safetensors")
    optimizer, extra_tensors = None, {}
    opt_file = ckpt_dir / "optim.safetensors"
    if with_optimizer and opt_file.is_file():
        tensors = load_file(str(opt_file), device=device)
        extra_tensors = {k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")}
        if state.get("optimizer") is not None:
            optimizer = optimizer_from_tensors(tensors, state["optimizer"])
    return Checkpoint(step=int(state["step"]), config=state["config"], network=state["network"], model=model,
                      ema=ema, optimizer=optimizer, extra=state.get("extra", {}), extra_tensors=extra_tensors,
                      path=ckpt_dir)


def export_checkpoint(path: str | Path, out_dir: str | Path, *, use_ema: bool = True, force: bool = False) -> Path:
    """Write a slim, inference-only copy of a checkpoint: one set of weights (the EMA weights unless
    ``use_ema`` is false) and ``state.json``; no optimizer, no second copy.  ``load_checkpoint`` reads it
    (the EMA weights then serve as both the raw and the EMA weights).  Refuses to replace an existing,
    non-empty ``out_dir`` unless ``force``."""
    ckpt = load_checkpoint(path, with_optimizer=False)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise UserError(f"{out} exists and is not empty; choose another --out or pass --force")
    if use_ema and ckpt.ema is None:
        raise UserError(f"checkpoint {ckpt.path} has no EMA weights; export the raw weights with --raw")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
    try:
        name = "ema.safetensors" if use_ema else "model.safetensors"
        _save_tensors(ckpt.ema if use_ema else ckpt.model, tmp / name)
        state = {"format_version": FORMAT_VERSION, "step": ckpt.step, "config": ckpt.config,
                 "network": ckpt.network, "optimizer": None, "has_ema": use_ema, "weights_only": True,
                 "extra": {"exported_from": str(ckpt.path), "weights": "ema" if use_ema else "raw"}}
        _write_bytes_synced(tmp / "state.json", json.dumps(state, indent=1).encode())
        _fsync_dir(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp made it private; an exported model is meant to be shared
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
