"""How a deployed node loads its records (#13 point 1): every record trains.

No node-side split depends on the other records: by default every record of the node's
file trains; with ``[data] validation-share`` a record is held out when a keyed hash of
that record under the node's own secret (:mod:`fedguard.privacy.node_secret`, label
``LABEL_VALIDATION``) falls below the share, so adding or removing one record moves no
other. Features come from public per-record transforms only (built-in constants or the
``[data] schema`` file).

Columns a schema marks ``scaling = "dp"`` arrive clipped but unscaled (still a
per-record transform). The node scales them with a DP estimate it releases once and
charges to its ledger and every record's budget BEFORE training
(:mod:`fedguard.client.scaling`); :func:`dp_scale` is the same mechanism for callers
that charge the returned event themselves.
"""

from __future__ import annotations

import numpy as np

from fedguard.deploy_config import NodeConfig
from fedguard.privacy.accountants import GaussianEvent
from fedguard.privacy.dp_scaling import dp_centre_scale
from fedguard.privacy.node_secret import LABEL_VALIDATION, keyed_digest, load_node_secret
from fedguard.task import Dataset, apply_scaling
from fedguard.task.api import LoadRequest
from fedguard.task.builtin import resolve_task
from fedguard.task.lazy_records import LazyDataset
from fedguard.task.task_checks import load_task_data

__all__ = ["dp_scale", "load_node_dataset"]

_SPLIT_KEY = b"holdout-key"  # the data HMAC'd under LABEL_VALIDATION to give the split key


def load_node_dataset(cfg: NodeConfig) -> Dataset | LazyDataset:
    """The node's records as a :class:`Dataset`: ``x_train`` is what it trains on,
    ``x_test`` its optional validation share (empty by default); a lazy task's as a
    :class:`LazyDataset` (its training records read per step)."""
    d = cfg.data
    # [data] task: the user task installed on this node; else the built-in loader (the
    # model does not matter to the data).
    task = resolve_task(
        task=d.task,
        model="logreg",
        target=d.target,
        schema=None if d.schema is None else str(d.schema),
    )
    if d.validation_share <= 0:
        return load_task_data(task, LoadRequest(source=d.dataset, seed=d.seed, split="none"))
    key = keyed_digest(load_node_secret(cfg.node.state_dir), LABEL_VALIDATION, _SPLIT_KEY)
    request = LoadRequest(
        source=d.dataset,
        seed=d.seed,
        split="holdout",
        test_fraction=d.validation_share,
        split_key=key,
    )
    return load_task_data(task, request)


def dp_scale(
    dataset: Dataset, *, noise_multiplier: float, rng: np.random.Generator
) -> tuple[Dataset, GaussianEvent | None]:
    """Scale the schema's ``scaling = "dp"`` columns with a DP estimate from the TRAINING
    records; returns the scaled data set and the event to charge (None: nothing to do).

    The caller must charge the event (ledger, per-record budget of every training record)
    before anything trained on the result leaves the node; the validation share is
    scaled with the same released centre/scale (post-processing).
    """
    plan = dataset.dp_scaling
    if plan is None:
        return dataset, None
    values = dataset.x_train[:, list(plan.columns)].astype(np.float64)
    est = dp_centre_scale(
        values=values, ranges=plan.ranges, noise_multiplier=noise_multiplier, rng=rng
    )
    return apply_scaling(dataset, centre=est.centre, scale=est.scale), est.event
