"""Training: the loop, EMA, checkpoints and distributed helpers."""

from .checkpoint import Checkpoint, find_checkpoint, load_checkpoint, save_checkpoint
from .ema import EMA

__all__ = ["Checkpoint", "EMA", "Trainer", "TrainResult", "find_checkpoint", "load_checkpoint",
           "save_checkpoint", "train"]


def __getattr__(name):  # the trainer imports ddpmkit.runs, which imports this package: load it lazily
    if name in ("Trainer", "TrainResult", "train"):
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(name)
