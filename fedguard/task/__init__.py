"""The task layer every part of fedguard shares.

Data sets (:func:`load_dataset`; declared feature schemas, :func:`load_schema`), client
partitions (:func:`partition`), models that Opacus can train (:func:`build_model`),
samplers and plain training/evaluation (:func:`train_plain`, :func:`evaluate`), metrics
and weight exchange (:func:`get_weights`, :func:`set_weights`). Nothing here knows about
privacy or Flower.
"""

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
from fedguard.task.partition import PARTITION_SCHEMES, partition
from fedguard.task.schema import COLUMN_TYPES, Schema, load_schema
from fedguard.task.train import (
    TrainStats,
    evaluate,
    poisson_batches,
    shuffled_batches,
    train_plain,
)
from fedguard.task.weights import get_weights, set_weights

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
