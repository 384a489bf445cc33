"""#14.5: before round 1 the server checks every node's description against the task.

A node describes (``query.describe``, :func:`fedguard.client.app.describe`) its input
shape, whether all its labels are class ids of the task (one bit: never its label set nor
its record count), the digest of its feature schema and the policy limits it will
enforce. A node that cannot take part is left out with one line naming it (by its
enrolled name) and the mismatch, instead of failing every round it is sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fedguard.console import printable
from fedguard.deploy_config import FederationConfig

__all__ = ["Misfit", "check_cohort", "task_query"]


@dataclass(frozen=True)
class Misfit:
    name: str  # enrolled name
    reason: str  # one line, node-reported values escaped


def task_query(cfg: FederationConfig) -> dict[str, int]:
    """What the describe query tells a node of the task (public constants only)."""
    return {"num-classes": cfg.task.num_classes}


def _schema_digest(cfg: FederationConfig) -> str:
    if cfg.task.schema is None:
        return ""
    from fedguard.task.schema import load_schema

    return load_schema(cfg.task.schema).digest()


def check_cohort(
    cfg: FederationConfig, described: Mapping[str, Mapping[str, object]]
) -> tuple[list[str], list[Misfit]]:
    """Split ``described`` (enrolled name -> description) into (fit names, misfits)."""
    schema = _schema_digest(cfg)
    fit: list[str] = []
    misfits: list[Misfit] = []
    for name, d in sorted(described.items()):
        reason = _mismatch(cfg, d, schema=schema)
        if reason:
            misfits.append(Misfit(name=name, reason=reason))
        else:
            fit.append(name)
    # Secure aggregation: a node demanding more live neighbours than there are other
    # fitting nodes would refuse every round.
    if cfg.secagg.enabled:
        for name in list(fit):
            need = described[name].get("min-neighbours")
            if isinstance(need, int) and need > len(fit) - 1:
                fit.remove(name)
                misfits.append(
                    Misfit(
                        name=name,
                        reason=f"its secagg.min-neighbours is {need}, but only "
                        f"{len(fit)} other node(s) fit the task",
                    )
                )
    return fit, misfits


def _mismatch(cfg: FederationConfig, d: Mapping[str, object], *, schema: str) -> str:
    t = cfg.task
    shape = d.get("input-shape")
    if not isinstance(shape, list) or not all(isinstance(v, int) for v in shape):
        return f"it described no input shape (got {printable(shape, limit=60)})"
    if list(shape) != list(t.input_shape):
        return f"input shape {printable(shape, limit=60)}, the task's is {list(t.input_shape)}"
    if d.get("labels-fit") is not True:
        return f"labels outside the task's {t.num_classes} classes (0..{t.num_classes - 1})"
    got = d.get("schema-digest", "")
    if schema and got != schema:
        return f"feature schema {printable(got, limit=80) or 'none'}, the task's is {schema}"
    epochs = d.get("max-local-epochs")
    if isinstance(epochs, int) and epochs < cfg.training.local_epochs:
        return (
            f"its privacy.max-local-epochs is {epochs}, the task asks "
            f"training.local-epochs = {cfg.training.local_epochs}"
        )
    if d.get("secagg-required") is True and not cfg.secagg.enabled:
        return "it requires secure aggregation ([secagg] required), the server has it off"
    c = d.get("max-colluding-nodes")
    if cfg.secagg.enabled and isinstance(c, int) and c > cfg.secagg.max_colluding_nodes:
        return (
            f"its secagg.max-colluding-nodes is {c}, the federation's [secagg] "
            f"max-colluding-nodes is {cfg.secagg.max_colluding_nodes}: it would refuse every "
            "secure round"
        )
    if cfg.secagg.enabled and d.get("secagg-roster") is False:
        return (
            "it has no [secagg] roster (the other nodes' public keys, received out of band), "
            "so it takes part in no secure round"
        )
    return ""
