"""The CPU speed paths of ``networks/layers.py``, behind one door.

Four layers have a second implementation that computes the same function (equal up to float
rounding; ``tests/networks/test_layers.py`` checks each against the plain one in float64) and can be
faster on a CPU:

==========================  ============================================================================
path                        what it does instead of the plain torch op
==========================  ============================================================================
``conv_weight_grad``        wide 3x3 convs: weight gradient as three matrix products (``MatmulGradConv2d``)
``groupnorm_sums``          narrow channels_last GroupNorm from per-channel sums (``GroupNorm``)
``dropout_bits``            dropout masks from 15-bit integers, two per random word (``Dropout``)
``upsample_transposed``     nearest x2 + 3x3 conv as one 4x4 stride-2 transposed conv (``Upsample``)
==========================  ============================================================================

**One switch.**  :func:`enabled` says whether a path is on.  ``DDPMKIT_CPU_FAST`` (read once) or
:func:`set_paths` / the :func:`paths` context choose: ``auto`` (default), ``all``, ``none`` or a
comma-separated list of path names.  ``auto`` takes the paths kept for this CPU: a profile measured
on this machine (``benchmarks/unet_speed.py --profile`` writes it to ``$DDPMKIT_CACHE_DIR`` or
``~/.cache/ddpmkit/cpu_fast.json``, keyed by CPU vendor/family/model and torch version) or, without
one, :data:`DEFAULT_PATHS`: the paths that gained on every CPU family measured so far (docs/unet.md
has the numbers).  A path is kept in a profile only when it makes a whole training or sampling step
at least :data:`MIN_GAIN` faster on some preset and slows none by more than :data:`MAX_LOSS`
or the run's own noise (:func:`keep_paths`; each path is timed alone against torch's ops, and judged
only on the steps where it runs: :data:`TRAINING_ONLY` paths on training steps).

**One gate.**  :func:`use` is the only test the layers make before a fast path: the path is enabled
and the input is an eager CPU tensor (not CUDA or another device, not under CPU autocast, not
inside ``torch.compile``).  Each layer adds only its own shape rule, and those rules look at one
sample's shape (channels, height, width), never at the batch size, so a sample's result does not
depend on the batch it is in.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import torch

from ..cache import user_cache_dir
from ..errors import UserError

PATHS = ("conv_weight_grad", "groupnorm_sums", "dropout_bits", "upsample_transposed")
# The paths kept on every CPU family measured (docs/unet.md, "The CPU speed paths"): none.  The old
# AMD EPYC without AVX-512 kept conv_weight_grad and upsample_transposed; the AMD EPYC Zen 4 with
# AVX-512 kept groupnorm_sums and dropout_bits, and conv_weight_grad made its training steps slower.
# So without a profile of this machine every layer runs torch's own op.
DEFAULT_PATHS: frozenset[str] = frozenset()
TRAINING_ONLY = frozenset({"conv_weight_grad", "dropout_bits"})  # never run in an eval-mode / no-grad forward
MIN_GAIN = 0.03
MAX_LOSS = 0.02  # run-to-run noise of a whole step on a quiet 2-core machine: a path that does not run in
                 # a mode (dropout in inference) measures 0.99-1.01 there
ENV = "DDPMKIT_CPU_FAST"

_override: frozenset[str] | None = None


def parse_spec(spec: str) -> frozenset[str] | None:
    """``'all'`` / ``'none'`` / ``'a,b'`` -> that set of paths; ``'auto'`` -> None (this CPU's)."""
    s = spec.strip().lower()
    if s in ("", "auto"):
        return None
    if s in ("all", "1", "on"):
        return frozenset(PATHS)
    if s in ("none", "0", "off"):
        return frozenset()
    names = frozenset(p.strip() for p in s.split(",") if p.strip())
    unknown = sorted(names - set(PATHS))
    if unknown:
        raise UserError(f"{ENV}: unknown CPU path{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                         f"known: {', '.join(PATHS)} (or auto, all, none)")
    return names


def cpu_identity() -> dict:
    """Vendor, family, model, model name and flags of this CPU, from /proc/cpuinfo (empty elsewhere)."""
    info: dict = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        info[key.strip()] = value.strip()
    return {"vendor": info.get("vendor_id", ""), "family": info.get("cpu family", ""),
            "model": info.get("model", ""), "name": info.get("model name", ""),
            "flags": frozenset(info.get("flags", "").split())}


def profile_key() -> str:
    """What a measured profile is valid for: CPU vendor / family / model and the torch version."""
    c = cpu_identity()
    return f"{c.get('vendor', '?')}-{c.get('family', '?')}-{c.get('model', '?')} torch-{torch.__version__}"


def profile_path() -> Path:
    return user_cache_dir() / "cpu_fast.json"


@lru_cache(maxsize=1)
def _profiled() -> frozenset[str] | None:
    try:
        entry = json.loads(profile_path().read_text()).get(profile_key())
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("paths"), list):
        return None
    return frozenset(p for p in entry["paths"] if p in PATHS)


@lru_cache(maxsize=1)
def _from_env() -> frozenset[str] | None:
    return parse_spec(os.environ.get(ENV, "auto"))


def active() -> frozenset[str]:
    """The paths on now: set_paths / paths() first, then DDPMKIT_CPU_FAST, then this CPU's profile,
    then DEFAULT_PATHS."""
    for chosen in (_override, _from_env(), _profiled()):
        if chosen is not None:
            return chosen
    return DEFAULT_PATHS


def source() -> str:
    """Where :func:`active` came from, for benchmark JSONs and ``--help`` texts."""
    if _override is not None:
        return "set_paths"
    if _from_env() is not None:
        return ENV
    if _profiled() is not None:
        return f"profile {profile_path()}"
    return "defaults"


def enabled(name: str) -> bool:
    if name not in PATHS:
        raise KeyError(f"unknown CPU path {name!r}; known: {', '.join(PATHS)}")
    return name in active()


def set_paths(spec: str | frozenset[str] | set[str] | None) -> None:
    """Choose the paths for this process: a spec string, a set of names, or None (back to auto)."""
    global _override
    if isinstance(spec, str):
        spec = parse_spec(spec)  # "auto" -> None
    if spec is not None:
        unknown = set(spec) - set(PATHS)
        if unknown:
            raise UserError(f"unknown CPU paths {sorted(unknown)}; known: {', '.join(PATHS)}")
        spec = frozenset(spec)
    _override = spec
    _profiled.cache_clear()


@contextmanager
def paths(spec: str | frozenset[str] | set[str] | None):
    """``with cpu_fast.paths("none"): ...`` runs the block with those paths, then restores the choice."""
    global _override
    saved = _override
    set_paths(spec)
    try:
        yield
    finally:
        _override = saved


def eager_cpu(x: torch.Tensor) -> bool:
    """The gate's tensor half: a CPU tensor, no CPU autocast, not traced by torch.compile."""
    return (x.device.type == "cpu"
            and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling())


def use(name: str, x: torch.Tensor) -> bool:
    """The one gate: path ``name`` is enabled and ``x`` is an eager CPU tensor.  The tensor half goes
    first, so that torch.compile never traces the profile lookup (a file read: a graph break in every
    layer)."""
    return eager_cpu(x) and enabled(name)


def keep_paths(ratios: dict[str, dict[str, float]], noise: float = 0.0) -> list[str]:
    """The profile's rule.  ``ratios[path][step]`` = time of that whole step without the path / with it
    (> 1: the path helps), over the steps where the path runs; ``noise`` = how far from 1 the same
    variant measured against itself reads (the A/A control of the same run).  A path is kept when some
    step gains at least :data:`MIN_GAIN` and no step loses more than :data:`MAX_LOSS`, each bound raised
    to the noise where that is larger: what the machine cannot tell from nothing neither keeps nor
    drops a path."""
    gain, loss = max(MIN_GAIN, noise), max(MAX_LOSS, noise)
    return [p for p in PATHS if ratios.get(p)
            and max(ratios[p].values()) >= 1 + gain and min(ratios[p].values()) >= 1 - loss]


def _load() -> tuple[Path, dict, dict]:
    """The profile file, its whole contents and this machine's entry in them (created empty if absent)."""
    path = profile_path()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data = data if isinstance(data, dict) else {}
    if not isinstance(data.get(profile_key()), dict):
        data[profile_key()] = {}
    return path, data, data[profile_key()]


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # one per process: DDP ranks may write at once
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def save_profile(kept: list[str], measurements: dict) -> Path:
    """Record the paths kept on this machine (and the whole-step measurements behind them); the other
    sections of the machine's entry (the bf16 layouts) are kept."""
    path, data, entry = _load()
    entry.update({"paths": sorted(kept), "cpu": cpu_identity().get("name", ""), "measurements": measurements})
    _write(path, data)
    _profiled.cache_clear()
    return path


def cached(section: str, key: str):
    """What this machine's profile entry holds under ``section``/``key`` (None: nothing yet)."""
    section_data = _load()[2].get(section)
    return section_data.get(key) if isinstance(section_data, dict) else None


def cache(section: str, key: str, value) -> Path:
    """Store ``value`` under ``section``/``key`` of this machine's profile entry (the same file and key
    as the kept paths: CPU model and torch version)."""
    path, data, entry = _load()
    if not isinstance(entry.get(section), dict):
        entry[section] = {}
    entry[section][key] = value
    _write(path, data)
    return path


__all__ = ["PATHS", "DEFAULT_PATHS", "TRAINING_ONLY", "MIN_GAIN", "MAX_LOSS", "ENV", "parse_spec", "cpu_identity",
           "profile_key", "profile_path", "active", "source", "enabled", "set_paths", "paths", "eager_cpu", "use",
           "keep_paths", "save_profile", "cached", "cache"]
