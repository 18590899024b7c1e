"""Run configuration: frozen dataclasses <-> TOML, with ``--set section.key=value`` overrides.

Unknown sections or keys are errors that name the valid ones; values are type-checked against
the field annotations.  A checkpoint stores the fully resolved config (``to_dict``), so ``sample``
and ``eval`` need only the checkpoint.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import UserError


@dataclass(frozen=True)
class RunSection:
    out_dir: str = "runs/default"
    seed: int = 0
    device: str = "auto"            # auto | cpu | cuda | cuda:N
    threads: int = 0                # torch intra-op threads on CPU; 0 = torch's default


@dataclass(frozen=True)
class DataSection:
    name: str = "digits"            # digits | fashion-mnist | cifar10 | image-folder | swiss-roll | ...
    data_dir: str = ""              # "" = the dataset's default location
    image_size: int = 0             # 0 = the dataset's native size
    channels: int = 0               # 0 = the dataset's native channels
    n: int = 0                      # number of points for 2-D toy sets (0 = default)
    flip: bool = False              # random horizontal flips
    class_conditional: bool = False
    storage: str = "auto"           # auto (prepared for image-folder, memory otherwise) | memory | prepared
    prepared_dir: str = ""          # "" = $DDPMKIT_PREPARED_DIR or ~/.cache/ddpmkit/prepared
    workers: int = 0                # decoding processes for the prepared copy; 0 = one per CPU core


@dataclass(frozen=True)
class DiffusionSection:
    schedule: str = "linear"
    timesteps: int = 1000
    prediction: str = "eps"         # eps | x0 | v | mean (mu~)
    variance: str = "fixed_small"   # fixed_small | fixed_large | learned_range | learned (log-variance)
    loss: str = "simple"            # simple (unweighted MSE on the target) | vlb (the bound L) | hybrid
    timestep_sampler: str = "auto"  # auto (importance sampling when the loss is vlb) | uniform | loss-second-moment
    #                                 | lognormal (EDM's ln sigma ~ N(lognormal_mean, lognormal_std^2))
    lognormal_mean: float = -1.2    # EDM's P_mean (timestep_sampler = "lognormal")
    lognormal_std: float = 1.2      # EDM's P_std
    loss_weighting: str = "none"    # none | min_snr (Min-SNR-gamma) | p2 (perception prioritized); simple/hybrid only
    min_snr_gamma: float = 5.0      # gamma of min_snr
    p2_gamma: float = 1.0           # gamma of p2 (0 = unweighted)
    p2_k: float = 1.0               # k of p2


@dataclass(frozen=True)
class ModelSection:
    kind: str = "unet"              # unet | mlp
    preset: str = "digits"
    options: dict = field(default_factory=dict)   # overrides of the preset's fields


@dataclass(frozen=True)
class TrainSection:
    steps: int = 2000
    batch_size: int = 64            # global batch (split over processes and accumulation)
    grad_accum: int = 1
    lr: float = 2e-4
    weight_decay: float = 0.0
    adam_betas: tuple = (0.9, 0.999)
    warmup: int = 0
    lr_schedule: str = "constant"   # after warm-up: constant | cosine | linear (decay to lr_min at the last step)
    lr_min: float = 0.0             # the decaying schedules' final learning rate
    lr_decay_start: int = 0         # the step a decaying schedule starts from (0 = right after warm-up)
    grad_clip: float = 1.0          # 0 = no clipping
    ema_decay: float = 0.9999
    ema_warmup: bool = True         # decay min(ema_decay, (1 + n) / (10 + n))
    ema: str = "exponential"        # exponential (ema_decay, ema_warmup) | power (EDM2's power function, ema_std)
    ema_std: float = 0.1            # power EMA: the averaging profile's width sigma_rel, relative to training time
    precision: str = "fp32"         # fp32 | bf16 (CUDA, or a CPU with native bf16) | fp16 (CUDA)
    compile: bool = False           # torch.compile the network's forward + backward (the first step compiles)
    cond_drop_prob: float = 0.1     # label dropout for classifier-free guidance
    log_every: int = 50
    sample_every: int = 0           # 0 = only at the end
    sample_n: int = 64
    sample_sampler: str = "ddim"
    sample_steps: int = 50
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3


@dataclass(frozen=True)
class Config:
    run: RunSection = field(default_factory=RunSection)
    data: DataSection = field(default_factory=DataSection)
    diffusion: DiffusionSection = field(default_factory=DiffusionSection)
    model: ModelSection = field(default_factory=ModelSection)
    train: TrainSection = field(default_factory=TrainSection)

    def to_dict(self) -> dict:
        return _to_plain(dataclasses.asdict(self))


def _to_plain(obj):
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp, where: str):
    """Check a TOML value against a field type (int, float, str, bool, tuple, dict)."""
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is tuple and isinstance(value, (list, tuple)):
        return tuple(value)
    if tp is bool and not isinstance(value, bool):
        raise UserError(f"{where} must be true or false, got {value!r}")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise UserError(f"{where} must be an integer, got {value!r}")
    if tp in (float, str, dict) and not isinstance(value, tp):
        raise UserError(f"{where} must be a {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    return value


def _section_from_dict(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise UserError(f"[{where}] must be a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise UserError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(repr(k) for k in unknown)} "
                        f"in [{where}]; valid keys: {', '.join(valid)}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if isinstance(tp, types.GenericAlias):
            tp = typing.get_origin(tp)
        kwargs[name] = _coerce(value, tp, f"{where}.{name}")
    return cls(**kwargs)



def config_from_dict(data: dict) -> Config:
    hints = typing.get_type_hints(Config)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise UserError(f"unknown section{'s' if len(unknown) > 1 else ''} {', '.join(repr(k) for k in unknown)}; "
                        f"valid sections: {', '.join(hints)}")
    return Config(**{name: _section_from_dict(hints[name], data.get(name, {}), name) for name in hints})


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'train.lr=1e-4'`` -> (['train', 'lr'], 1e-4).  Values are TOML literals; bare words are strings."""
    if "=" not in text:
        raise UserError(f"--set expects section.key=value, got {text!r}")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if len(path) < 2 or not all(path):
        raise UserError(f"--set key must look like section.key (e.g. train.lr), got {key!r}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return path, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    data = _to_plain(data)
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {text!r}: {part!r} is not a table")
        node[path[-1]] = value
    return data


SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"  # package data: the wheel ships them


def shipped_configs() -> dict[str, Path]:
    """The configs that come with ddpmkit, by name (``digits`` -> .../ddpmkit/configs/digits.toml)."""
    return {p.stem: p for p in sorted(SHIPPED_CONFIGS.glob("*.toml"))}


def resolve_config_path(path: str | Path) -> Path:
    """A config file: ``path`` itself when it is a file, else the shipped config of that name
    (``digits`` or ``digits.toml``).  Errors name the shipped ones."""
    p = Path(path)
    if p.is_file():
        return p
    shipped = shipped_configs()
    name = p.name[:-len(".toml")] if p.name.endswith(".toml") else p.name
    if p.parent in (Path("."), Path("configs")) and name in shipped:
        return shipped[name]
    raise UserError(f"config file not found: {p}; shipped configs (usable by name, `ddpmkit configs` lists "
                    f"them): {', '.join(shipped)}")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    data: dict = {}
    if path is not None:
        p = resolve_config_path(path)
        try:
            data = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"{p}: not valid TOML: {e}") from None
    return config_from_dict(apply_overrides(data, overrides or []))


def dump_toml(cfg: Config) -> str:
    """A TOML rendering of the resolved config (for run directories and `info`)."""
    def fmt(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {fmt(x)}" for k, x in v.items()) + " }"
        return repr(v)

    lines = []
    for section, values in cfg.to_dict().items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {fmt(v)}" for k, v in values.items()]
        lines.append("")
    return "\n".join(lines)
