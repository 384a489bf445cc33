"""A deployed node's training records, loaded once per process from its ``node.toml``.

The records as tensors (or, for a lazy task, read per step), the key of each record for
the per-record budget (sha256 of its raw bytes, from the loader), and the dp-scaling plan
of the columns still to be scaled. What spends the budget on them is
:class:`fedguard.client.node.NodeRuntime`. It does not import Flower.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from fedguard.client.node_data import load_node_dataset
from fedguard.deploy_config import NodeConfig
from fedguard.errors import DataError
from fedguard.task import Dataset, load_dataset, load_schema
from fedguard.task.lazy_records import LazyDataset, TaskRecords
from fedguard.task.records import record_partition
from fedguard.task.schema import DPScalingPlan

__all__ = ["NodeRecords", "fallback_record_keys", "load_node_records"]


@dataclass(frozen=True, kw_only=True)
class NodeRecords:
    """What :func:`load_node_records` loaded: the fields of a ``NodeRuntime`` of the same
    names (see there)."""

    x: torch.Tensor | None
    y: torch.Tensor
    input_shape: tuple[int, ...]
    num_classes: int
    record_keys: np.ndarray
    dp_plan: DPScalingPlan | None = None
    schema_digest: str = ""
    data: TaskRecords | None = None


def load_node_records(cfg: NodeConfig) -> NodeRecords:
    """Load and check the records ``cfg`` names (the demo's share of a public data set, or
    the node's own file, every record training but a validation share)."""
    d = cfg.data
    ds: Dataset | LazyDataset
    if d.num_partitions is not None and d.partition_id is not None:
        # The demo: nodes share one public data set, each taking the records whose keyed
        # hash names its share (per record: one record added moves no other), never the
        # server's evaluation holdout.
        ds = load_dataset(
            name=d.dataset, seed=d.seed, target=d.target, schema=d.schema, split="holdout"
        )
        if ds.train_record_keys is None:
            raise DataError(f"{d.dataset}: no record keys to decide the demo's shares by")
        share = record_partition(ds.train_record_keys, parts=d.num_partitions, seed=d.seed)
        idx = np.flatnonzero(share == d.partition_id)
        x, y = ds.x_train[idx], ds.y_train[idx]
    else:
        ds = load_node_dataset(cfg)  # every record trains; schema, validation share (#13.1)
        if isinstance(ds, LazyDataset):  # keys and labels from the load's one pass
            return NodeRecords(
                x=None,
                y=torch.from_numpy(ds.y_train),
                input_shape=ds.input_shape,
                num_classes=ds.num_classes,
                record_keys=ds.train_record_keys,
                data=ds.train,
            )
        x, y = ds.x_train, ds.y_train
    plan = ds.dp_scaling
    digest = load_schema(d.schema).digest() if plan is not None and d.schema else ""
    keys = getattr(ds, "train_record_keys", None)  # sha256 of each record's raw bytes
    if keys is None:
        keys = fallback_record_keys(x, y)  # FALLBACK: remove once every loader gives keys
    elif d.num_partitions is not None and d.partition_id is not None:
        keys = keys[idx]
    return NodeRecords(
        x=torch.from_numpy(x),
        y=torch.from_numpy(y),
        input_shape=ds.input_shape,
        num_classes=ds.num_classes,
        record_keys=np.asarray(keys),
        dp_plan=plan,
        schema_digest=digest,
    )


def fallback_record_keys(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """FALLBACK (remove once ``Dataset.train_record_keys`` is everywhere): sha256 of each
    training row's bytes and its label, as an (n, 32) uint8 array.

    A row identifies a record only after the loader's transforms, so a record loaded with
    other transforms gets another key; the loader's keys (raw bytes) do not have that flaw.
    """
    xs = np.ascontiguousarray(x).reshape(len(x), -1)
    ys = np.ascontiguousarray(y)
    out = np.empty((len(xs), 32), dtype=np.uint8)
    for i in range(len(xs)):
        h = hashlib.sha256(xs[i].tobytes())
        h.update(ys[i].tobytes())
        out[i] = np.frombuffer(h.digest(), dtype=np.uint8)
    return out
