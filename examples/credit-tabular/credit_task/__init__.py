"""A bank's credit-default task for fedguard: its own columns, model and metrics.

Name it as ``task = "credit_task:task"`` (this folder on ``PYTHONPATH``, or installed).
Every row is encoded on its own with the public constants of ``schema.toml``
(categorical levels one-hot, numeric columns clipped and scaled), so nothing fitted to
the bank's records runs before DP-SGD.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from torch import nn

from fedguard.errors import ConfigError
from fedguard.task import load_schema
from fedguard.task.api import LoadRequest, Task, TaskArrays
from fedguard.task.user_files import load_table

SCHEMA = load_schema(Path(__file__).with_name("schema.toml"))


def model(*, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A small MLP; tanh keeps clipped gradients informative."""
    return nn.Sequential(nn.Linear(input_shape[0], 16), nn.Tanh(), nn.Linear(16, num_classes))


def load(request: LoadRequest) -> TaskArrays:
    """The CSV file the node (or simulation) names as its data."""
    table = load_table(Path(request.source), target=None, schema=SCHEMA)
    if table.plan is not None:  # columns left unscaled for a DP estimate this path skips
        raise ConfigError(
            f'credit_task: schema.toml: scaling = "dp" columns {table.plan.names} are not '
            "supported in a user task; give them a public range"
        )
    return TaskArrays(x=table.x, y=table.y)


def metrics(y_true: np.ndarray, probabilities: np.ndarray) -> Mapping[str, float]:
    """What the credit team reads: defaults caught when reviewing the riskiest 10%."""
    risk = probabilities[:, 1]
    flagged = np.argsort(-risk, kind="stable")[: max(1, len(risk) // 10)]
    positives = int((y_true == 1).sum())
    caught = int((y_true[flagged] == 1).sum())
    return {
        "default_rate": float(positives / max(1, len(y_true))),
        "recall_at_top10pct": float(caught / positives) if positives else float("nan"),
    }


task = Task(
    name="credit-default",
    model=model,
    load=load,
    input_shape=SCHEMA.input_shape,
    num_classes=SCHEMA.num_classes,
    metrics=metrics,
    class_names=SCHEMA.labels,
)
