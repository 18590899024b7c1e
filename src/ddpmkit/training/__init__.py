"""Training: the loop, EMA and distributed helpers (checkpoints live in :mod:`ddpmkit.checkpoint`)."""

from ..checkpoint import Checkpoint, find_checkpoint, load_checkpoint, save_checkpoint
from .ema import EMA
from .trainer import Trainer, TrainResult, train

__all__ = ["Checkpoint", "EMA", "Trainer", "TrainResult", "find_checkpoint", "load_checkpoint",
           "save_checkpoint", "train"]
