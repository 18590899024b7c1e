"""Datasets held in memory, and the only conversion between uint8 pixels and the model range [-1, 1]."""

from .cifar import SafeUnpickler, read_cifar_batch, safe_load_pickle
from .dataset import DataError, Dataset, resize_center_crop
from .idx import read_idx
from .images import read_image_array, to_8bit
from .pixels import to_model_range, to_uint8
from .registry import DATASETS, dataset_names, load_dataset
from .toy import TOY_SETS

__all__ = [
    "DATASETS", "DataError", "Dataset", "SafeUnpickler", "TOY_SETS", "dataset_names", "load_dataset",
    "read_cifar_batch", "read_idx", "read_image_array", "resize_center_crop", "safe_load_pickle",
    "to_8bit", "to_model_range", "to_uint8",
]
