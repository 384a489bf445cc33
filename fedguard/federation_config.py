"""``federation.toml``, the operator's file: its sections, defaults and checks.

Read with :mod:`fedguard.deploy_toml`; every error is one line naming the file, the
``section.key``, what is allowed and the value received. The public front door is
:mod:`fedguard.deploy_config`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from fedguard._toml import read_toml
from fedguard.deploy_toml import (
    check_key,
    check_task_spec,
    config_path,
    only_keys,
    path_exists,
    read_section,
)
from fedguard.errors import ConfigError
from fedguard.fl.limits import MAX_UPDATE_NORM
from fedguard.fl.strategies import STRATEGIES

__all__ = [
    "ClientDPSection",
    "FederationConfig",
    "FederationSection",
    "SecAggSection",
    "ServerNetwork",
    "TaskSection",
    "TrainingSection",
    "load_federation_config",
]


@dataclass(frozen=True, kw_only=True)
class FederationSection:
    name: str = "federation"
    rounds: int = 3
    min_nodes: int = 2
    fraction: float = 1.0
    strategy: str = "fedavg"
    server_lr: float = 1.0
    server_momentum: float = 0.0  # fedavgm only
    prox_mu: float = 0.01  # fedprox only
    round_timeout: float = 300.0
    seed: int = 0
    max_update_norm: float = MAX_UPDATE_NORM  # plain rounds: larger updates are refused
    # The most one node's update weighs in the mean (a public constant, never learnt from
    # the nodes): 1 = equal weights; above 1, nodes with privacy.reveal-count weigh
    # min(records, weight-cap), inside the masked vector under secure aggregation.
    weight_cap: int = 1


@dataclass(frozen=True, kw_only=True)
class TaskSection:
    model: str = "logreg"
    input_shape: list[int] = field(default_factory=lambda: [1, 8, 8])
    num_classes: int = 10
    eval_dataset: str | None = None  # built-in name or a file, held out on the server
    eval_target: str | None = None
    schema: Path | None = None  # the feature schema the nodes share (eval file read with it)
    # A user task "package.module:attribute" (fedguard.task.api) installed on the server
    # and every node; None: the built-in model.
    task: str | None = None


@dataclass(frozen=True, kw_only=True)
class TrainingSection:
    local_epochs: int = 1
    batch_size: int = 64
    lr: float = 0.5
    momentum: float = 0.0
    max_grad_norm: float = 0.5
    # Public per-class loss weights in (0, 1], one per class (fedguard.privacy.class_weights).
    class_weights: list[float] | None = None


@dataclass(frozen=True, kw_only=True)
class ServerNetwork:
    host: str = "127.0.0.1"
    fleet_port: int = 9092
    control_port: int = 9093
    ca_cert: Path | None = None
    server_cert: Path | None = None
    server_key: Path | None = None
    keys_dir: Path | None = None  # enrolled nodes' *.pub
    insecure: bool = False


@dataclass(frozen=True, kw_only=True)
class SecAggSection:
    """[secagg] of federation.toml: SecAgg+ secure aggregation (on unless disabled)."""

    enabled: bool = True
    clip_range: float = 1.0  # each update coordinate is clipped to [-clip-range, clip-range]
    bits: int = 16  # quantisation levels 2**bits - 1 over that range
    dropout_tolerance: float = 1 / 3  # fraction of a cohort that may drop mid-round
    # c: nodes assumed to collude with the server; sent in every session (each node
    # refuses one assuming fewer than its own node.toml value).
    max_colluding_nodes: int = 0


@dataclass(frozen=True, kw_only=True)
class ClientDPSection:
    """[client-dp] of federation.toml: client-level DP, noise added in shares by nodes."""

    enabled: bool = False
    clip_norm: float = 1.0  # L2 clip of each node's round update
    noise_multiplier: float = 1.0  # of the summed updates
    delta: float = 1e-5  # of the client-level guarantee


@dataclass(frozen=True, kw_only=True)
class FederationConfig:
    """``federation.toml``: sections [federation], [task], [training], [server]."""

    source: Path
    federation: FederationSection
    task: TaskSection
    training: TrainingSection
    server: ServerNetwork
    state_dir: Path
    out: Path
    secagg: SecAggSection = field(default_factory=SecAggSection)
    client_dp: ClientDPSection = field(default_factory=ClientDPSection)

    def digest(self) -> str:
        """Hash of the settings that define the model's training (stored in checkpoints)."""
        doc = {k: dataclasses.asdict(getattr(self, k)) for k in ("federation", "task", "training")}
        if self.federation.strategy != "fedprox":
            # Unused then; leaving it out keeps the digests of configs made before it.
            del doc["federation"]["prox_mu"]
        # A safety bound, not a training setting: changing it need not restart a run.
        del doc["federation"]["max_update_norm"]
        if self.task.schema is None:  # leaving it out keeps earlier configs' digests
            del doc["task"]["schema"]
        if self.task.task is None:  # a built-in model: earlier configs' digests hold
            del doc["task"]["task"]
        if self.training.class_weights is None:  # unset: earlier configs' digests hold
            del doc["training"]["class_weights"]
        if self.federation.weight_cap == 1:
            # The default; leaving it out keeps the digests of configs made before it.
            del doc["federation"]["weight_cap"]
        return hashlib.sha256(repr(sorted(doc.items())).encode()).hexdigest()[:16]


def load_federation_config(path: Path) -> FederationConfig:
    raw = read_toml(path)
    sections = {"federation", "task", "training", "server", "secagg", "client-dp"}
    only_keys(raw, sections | {"state-dir", "out"}, path, "")
    cfg = FederationConfig(
        source=path.resolve(),
        federation=read_section(raw, "federation", FederationSection, path),
        task=read_section(raw, "task", TaskSection, path),
        training=read_section(raw, "training", TrainingSection, path),
        server=read_section(raw, "server", ServerNetwork, path),
        state_dir=config_path("state-dir", raw.get("state-dir", "server-state"), path),
        out=config_path("out", raw.get("out", "results"), path),
        secagg=read_section(raw, "secagg", SecAggSection, path),
        client_dp=read_section(raw, "client-dp", ClientDPSection, path),
    )
    cd = cfg.client_dp
    if cd.enabled:
        check_key(
            path, "client-dp.enabled", cfg.secagg.enabled, "false unless [secagg] is on", True
        )
        check_key(path, "client-dp.clip-norm", cd.clip_norm > 0, "a number > 0", cd.clip_norm)
        check_key(
            path,
            "client-dp.noise-multiplier",
            cd.noise_multiplier > 0,
            "a number > 0",
            cd.noise_multiplier,
        )
        check_key(path, "client-dp.delta", 0 < cd.delta < 1, "a number in (0, 1)", cd.delta)
    check_task_spec(path, "task.task", cfg.task.task)
    sa = cfg.secagg
    check_key(path, "secagg.clip-range", sa.clip_range > 0, "a number > 0", sa.clip_range)
    check_key(path, "secagg.bits", 1 <= sa.bits <= 30, "an integer in [1, 30]", sa.bits)
    if sa.enabled:
        check_key(
            path,
            "federation.min-nodes",
            cfg.federation.min_nodes >= 2,
            "an integer >= 2 with secure aggregation (a sum of one update is that update)",
            cfg.federation.min_nodes,
        )
    check_key(
        path,
        "secagg.dropout-tolerance",
        1 / 3 <= sa.dropout_tolerance < 0.5,
        "a fraction in [1/3, 1/2)",
        sa.dropout_tolerance,
    )
    mc = sa.max_colluding_nodes
    check_key(path, "secagg.max-colluding-nodes", mc >= 0, "an integer >= 0", mc)
    f, t, tr, s = cfg.federation, cfg.task, cfg.training, cfg.server
    check_key(path, "federation.rounds", f.rounds >= 1, "an integer >= 1", f.rounds)
    check_key(path, "federation.min-nodes", f.min_nodes >= 1, "an integer >= 1", f.min_nodes)
    check_key(path, "federation.fraction", 0 < f.fraction <= 1, "a number in (0, 1]", f.fraction)
    check_key(path, "federation.strategy", f.strategy in STRATEGIES, STRATEGIES, f.strategy)
    check_key(path, "federation.prox-mu", f.prox_mu >= 0, "a number >= 0", f.prox_mu)
    check_key(path, "federation.round-timeout", f.round_timeout > 0, "seconds > 0", f.round_timeout)
    check_key(
        path,
        "federation.max-update-norm",
        f.max_update_norm > 0,
        "a number > 0 (an L2 norm)",
        f.max_update_norm,
    )
    check_key(path, "federation.weight-cap", f.weight_cap >= 1, "an integer >= 1", f.weight_cap)
    check_key(path, "task.num-classes", t.num_classes >= 2, "an integer >= 2", t.num_classes)
    check_key(
        path,
        "task.schema",
        t.schema is None or path_exists(t.schema),
        "an existing schema file (TOML)",
        None if t.schema is None else str(t.schema),
    )
    check_key(
        path,
        "task.input-shape",
        bool(t.input_shape)
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in t.input_shape),
        "a list of integers >= 1",
        t.input_shape,
    )
    check_key(
        path, "training.local-epochs", tr.local_epochs >= 1, "an integer >= 1", tr.local_epochs
    )
    check_key(path, "training.batch-size", tr.batch_size >= 1, "an integer >= 1", tr.batch_size)
    check_key(path, "training.lr", tr.lr > 0, "a number > 0", tr.lr)
    check_key(
        path, "training.max-grad-norm", tr.max_grad_norm > 0, "a number > 0", tr.max_grad_norm
    )
    if tr.class_weights is not None:
        from fedguard.privacy.class_weights import check_class_weights

        try:
            check_class_weights(tr.class_weights, num_classes=t.num_classes)
            weights_ok = True
        except ConfigError:
            weights_ok = False
        check_key(
            path,
            "training.class-weights",
            weights_ok,
            f"{t.num_classes} numbers (task.num-classes), each in (0, 1]",
            tr.class_weights,
        )
    for key, port in (("server.fleet-port", s.fleet_port), ("server.control-port", s.control_port)):
        check_key(path, key, 1 <= port <= 65535, "a port 1-65535", port)
    if not s.insecure:
        for key in ("ca_cert", "server_cert", "server_key", "keys_dir"):
            value = getattr(s, key)
            check_key(
                path,
                f"server.{key.replace('_', '-')}",
                value is not None and path_exists(value),
                "an existing path (run `fedguard certs init`), or insecure = true",
                None if value is None else str(value),
            )
    return cfg
