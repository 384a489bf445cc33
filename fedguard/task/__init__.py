"""The task layer every part of fedguard shares.

Data sets (:func:`load_dataset`; declared feature schemas, :func:`load_schema`), client
partitions (:func:`partition`), models that Opacus can train (:func:`build_model`),
samplers and plain training/evaluation (:func:`train_plain`, :func:`evaluate`), metrics
and weight exchange (:func:`get_weights`, :func:`set_weights`). Nothing here knows about
privacy or Flower.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedguard._lazy import lazy_getattr

if TYPE_CHECKING:
    from fedguard.task.data import (
        DATASET_NAMES,
        FASHION_MNIST_DIR,
        FASHION_MNIST_MEAN,
        FASHION_MNIST_STD,
        SPLITS,
        Dataset,
        apply_scaling,
        load_dataset,
        read_idx,
    )
    from fedguard.task.metrics import Metrics, compute_metrics
    from fedguard.task.models import MODEL_NAMES, build_model
    from fedguard.task.schema import COLUMN_TYPES, Schema, load_schema
    from fedguard.task.train import (
        TrainStats,
        evaluate,
        poisson_batches,
        shuffled_batches,
        train_plain,
    )
    from fedguard.task.weights import get_weights, set_weights

# ``partition`` is both a submodule and its function: bound here (numpy only), so that
# importing the submodule later never leaves the package attribute pointing at the module.
from fedguard.task.partition import PARTITION_SCHEMES, partition

# Everything else is imported on first use (PEP 562): option and config checks read
# the names here without importing torch (a bad --model is rejected in well under a second).
_LAZY = {
    "DATASET_NAMES": "data",
    "FASHION_MNIST_DIR": "data",
    "FASHION_MNIST_MEAN": "data",
    "FASHION_MNIST_STD": "data",
    "SPLITS": "data",
    "Dataset": "data",
    "apply_scaling": "data",
    "load_dataset": "data",
    "read_idx": "data",
    "Metrics": "metrics",
    "compute_metrics": "metrics",
    "MODEL_NAMES": "model_names",
    "build_model": "models",
    "COLUMN_TYPES": "schema",
    "Schema": "schema",
    "load_schema": "schema",
    "TrainStats": "train",
    "evaluate": "train",
    "poisson_batches": "train",
    "shuffled_batches": "train",
    "train_plain": "train",
    "get_weights": "weights",
    "set_weights": "weights",
}


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


__all__ = [
    "DATASET_NAMES",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "COLUMN_TYPES",
    "MODEL_NAMES",
    "PARTITION_SCHEMES",
    "SPLITS",
    "Dataset",
    "Schema",
    "Metrics",
    "TrainStats",
    "apply_scaling",
    "build_model",
    "compute_metrics",
    "evaluate",
    "get_weights",
    "load_dataset",
    "load_schema",
    "partition",
    "poisson_batches",
    "read_idx",
    "set_weights",
    "shuffled_batches",
    "train_plain",
]
