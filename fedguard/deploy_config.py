"""Deployment configuration: ``federation.toml`` (operator) and ``node.toml`` (hospital/bank).

Each file has sections of typed keys. Every error is one line naming the file, the
``section.key``, what is allowed and the value received. Relative paths are resolved
against the config file's folder, so a config can be moved with its certificates.

(Over the 400-line guide: both files' sections, defaults and checks are read by one set of
helpers; split apart, a key and its check would live in different modules.)
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from fedguard._checks import coerce
from fedguard._toml import read_toml
from fedguard.config import ACCOUNTANTS
from fedguard.deploy.certs import _NODE_NAME as NODE_NAME
from fedguard.deploy.roster import load_roster
from fedguard.errors import ConfigError, invalid
from fedguard.fl.limits import MAX_UPDATE_NORM
from fedguard.fl.strategies import STRATEGIES

__all__ = [
    "CONFIG_KEY",
    "NODE_CONFIG_KEY",
    "FederationConfig",
    "NodeConfig",
    "load_federation_config",
    "load_node_config",
]

CONFIG_KEY = "config-path"
"""The run-config key through which `fedguard server` gives its ServerApp federation.toml."""

NODE_CONFIG_KEY = "fedguard-node-config"
"""The --node-config key through which `fedguard client` gives its ClientApp node.toml.

Both live here, not beside the Flower apps, so that the launchers (which only start
processes) need not import torch and Flower to name them."""


T = TypeVar("T")


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


@dataclass(frozen=True, kw_only=True)
class NodeSection:
    name: str
    server: str = "127.0.0.1:9092"
    ca_cert: Path | None = None
    private_key: Path | None = None
    state_dir: Path = Path("state")
    port: int | None = None  # the SuperNode's local Runtime API; None: a free one at start
    insecure: bool = False


@dataclass(frozen=True, kw_only=True)
class DataSection:
    dataset: str = "digits"  # built-in name or a .csv/.parquet/.npz path
    target: str | None = None
    partition_id: int | None = None  # demo: take one IID share of a shared data set
    num_partitions: int | None = None
    seed: int = 0
    schema: Path | None = None  # declared feature schema of a CSV/Parquet (next to node.toml)
    validation_share: float = 0.0  # records kept out of training, each by a keyed hash
    task: str | None = None  # the user task installed here ("package.module:attribute")


@dataclass(frozen=True, kw_only=True)
class PolicySection:
    max_epsilon: float = 3.0  # lifetime: every run on this data set together
    run_epsilon: float | None = None  # optional cap on one run's own spend
    delta: float = 1e-5
    min_noise_multiplier: float = 0.3
    max_noise_multiplier: float = 10.0  # a run needing more (budget nearly spent) is refused
    max_local_epochs: int = 5
    accountant: str = "rdp"
    # Whether the server may learn this node's record count: in a plain round's reply and
    # receipt, and as its weight inside a secure sum (whose totals over changing cohorts
    # would give it away too). Off: weight 1, no count-revealing receipt field.
    reveal_count: bool = False


@dataclass(frozen=True, kw_only=True)
class NodeSecAggSection:
    """[secagg] of node.toml: what this node demands of secure aggregation."""

    required: bool = True  # refuse to send an update the server could read alone
    min_neighbours: int = 2  # live neighbours needed before the node reveals anything
    # Folder of NAME.pub node keys (received out of band): checks the server cannot forge.
    roster: Path | None = None
    max_colluding_nodes: int = 0  # nodes that may collude with the server (sets the quorum)


@dataclass(frozen=True, kw_only=True)
class NodeConfig:
    """``node.toml``: sections [node], [data], [privacy], [secagg] (the node's own policy)."""

    source: Path
    node: NodeSection
    data: DataSection
    privacy: PolicySection
    secagg: NodeSecAggSection = field(default_factory=NodeSecAggSection)


def load_federation_config(path: Path) -> FederationConfig:
    raw = read_toml(path)
    sections = {"federation", "task", "training", "server", "secagg", "client-dp"}
    _only(raw, sections | {"state-dir", "out"}, path, "")
    cfg = FederationConfig(
        source=path.resolve(),
        federation=_section(raw, "federation", FederationSection, path),
        task=_section(raw, "task", TaskSection, path),
        training=_section(raw, "training", TrainingSection, path),
        server=_section(raw, "server", ServerNetwork, path),
        state_dir=_path("state-dir", raw.get("state-dir", "server-state"), path),
        out=_path("out", raw.get("out", "results"), path),
        secagg=_section(raw, "secagg", SecAggSection, path),
        client_dp=_section(raw, "client-dp", ClientDPSection, path),
    )
    cd = cfg.client_dp
    if cd.enabled:
        _check(path, "client-dp.enabled", cfg.secagg.enabled, "false unless [secagg] is on", True)
        _check(path, "client-dp.clip-norm", cd.clip_norm > 0, "a number > 0", cd.clip_norm)
        _check(
            path,
            "client-dp.noise-multiplier",
            cd.noise_multiplier > 0,
            "a number > 0",
            cd.noise_multiplier,
        )
        _check(path, "client-dp.delta", 0 < cd.delta < 1, "a number in (0, 1)", cd.delta)
    _check_task_spec(path, "task.task", cfg.task.task)
    sa = cfg.secagg
    _check(path, "secagg.clip-range", sa.clip_range > 0, "a number > 0", sa.clip_range)
    _check(path, "secagg.bits", 1 <= sa.bits <= 30, "an integer in [1, 30]", sa.bits)
    if sa.enabled:
        _check(
            path,
            "federation.min-nodes",
            cfg.federation.min_nodes >= 2,
            "an integer >= 2 with secure aggregation (a sum of one update is that update)",
            cfg.federation.min_nodes,
        )
    _check(
        path,
        "secagg.dropout-tolerance",
        1 / 3 <= sa.dropout_tolerance < 0.5,
        "a fraction in [1/3, 1/2)",
        sa.dropout_tolerance,
    )
    mc = sa.max_colluding_nodes
    _check(path, "secagg.max-colluding-nodes", mc >= 0, "an integer >= 0", mc)
    f, t, tr, s = cfg.federation, cfg.task, cfg.training, cfg.server
    _check(path, "federation.rounds", f.rounds >= 1, "an integer >= 1", f.rounds)
    _check(path, "federation.min-nodes", f.min_nodes >= 1, "an integer >= 1", f.min_nodes)
    _check(path, "federation.fraction", 0 < f.fraction <= 1, "a number in (0, 1]", f.fraction)
    _check(path, "federation.strategy", f.strategy in STRATEGIES, STRATEGIES, f.strategy)
    _check(path, "federation.prox-mu", f.prox_mu >= 0, "a number >= 0", f.prox_mu)
    _check(path, "federation.round-timeout", f.round_timeout > 0, "seconds > 0", f.round_timeout)
    _check(
        path,
        "federation.max-update-norm",
        f.max_update_norm > 0,
        "a number > 0 (an L2 norm)",
        f.max_update_norm,
    )
    _check(path, "federation.weight-cap", f.weight_cap >= 1, "an integer >= 1", f.weight_cap)
    _check(path, "task.num-classes", t.num_classes >= 2, "an integer >= 2", t.num_classes)
    _check(
        path,
        "task.schema",
        t.schema is None or _exists(t.schema),
        "an existing schema file (TOML)",
        None if t.schema is None else str(t.schema),
    )
    _check(
        path,
        "task.input-shape",
        bool(t.input_shape)
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in t.input_shape),
        "a list of integers >= 1",
        t.input_shape,
    )
    _check(path, "training.local-epochs", tr.local_epochs >= 1, "an integer >= 1", tr.local_epochs)
    _check(path, "training.batch-size", tr.batch_size >= 1, "an integer >= 1", tr.batch_size)
    _check(path, "training.lr", tr.lr > 0, "a number > 0", tr.lr)
    _check(path, "training.max-grad-norm", tr.max_grad_norm > 0, "a number > 0", tr.max_grad_norm)
    if tr.class_weights is not None:
        from fedguard.privacy.class_weights import check_class_weights

        try:
            check_class_weights(tr.class_weights, num_classes=t.num_classes)
            weights_ok = True
        except ConfigError:
            weights_ok = False
        _check(
            path,
            "training.class-weights",
            weights_ok,
            f"{t.num_classes} numbers (task.num-classes), each in (0, 1]",
            tr.class_weights,
        )
    for key, port in (("server.fleet-port", s.fleet_port), ("server.control-port", s.control_port)):
        _check(path, key, 1 <= port <= 65535, "a port 1-65535", port)
    if not s.insecure:
        for key in ("ca_cert", "server_cert", "server_key", "keys_dir"):
            value = getattr(s, key)
            _check(
                path,
                f"server.{key.replace('_', '-')}",
                value is not None and _exists(value),
                "an existing path (run `fedguard certs init`), or insecure = true",
                None if value is None else str(value),
            )
    return cfg


def _check_task_spec(path: Path, key: str, spec: str | None) -> None:
    from fedguard.task.api import SPEC_FORMAT, is_task_spec

    _check(path, key, spec is None or is_task_spec(spec), SPEC_FORMAT, spec)


def load_node_config(path: Path) -> NodeConfig:
    raw = read_toml(path)
    _only(raw, {"node", "data", "privacy", "secagg"}, path, "")
    node = raw.get("node", {})
    if not isinstance(node, dict):
        raise invalid("node", allowed="a [section]", got=node, source=path)
    if "name" not in node:
        raise invalid("node.name", allowed="the node's name", got=None, source=path)
    cfg = NodeConfig(
        source=path.resolve(),
        node=_section(raw, "node", NodeSection, path),
        data=_section(raw, "data", DataSection, path),
        privacy=_section(raw, "privacy", PolicySection, path),
        secagg=_section(raw, "secagg", NodeSecAggSection, path),
    )
    mn = cfg.secagg.min_neighbours
    _check(path, "secagg.min-neighbours", mn >= 1, "an integer >= 1", mn)
    mc = cfg.secagg.max_colluding_nodes
    _check(path, "secagg.max-colluding-nodes", mc >= 0, "an integer >= 0", mc)
    n, d, p = cfg.node, cfg.data, cfg.privacy
    _check_task_spec(path, "data.task", d.task)
    # The rule of `fedguard certs node NAME`: the name goes into console and log lines.
    _check(
        path,
        "node.name",
        bool(NODE_NAME.match(n.name)),
        "a letter or digit, then up to 62 of A-Z a-z 0-9 _ . -",
        n.name,
    )
    host, _, port = n.server.rpartition(":")
    _check(
        path,
        "node.server",
        bool(host) and port.isdigit() and 1 <= int(port) <= 65535,
        "HOST:PORT with a port 1-65535",
        n.server,
    )
    _check(
        path,
        "node.state-dir",
        not n.state_dir.exists() or n.state_dir.is_dir(),
        "a folder (created if missing)",
        str(n.state_dir),
    )
    if n.port is not None:
        _check(path, "node.port", 1 <= n.port <= 65535, "a port 1-65535", n.port)
    if not n.insecure:
        for key in ("ca_cert", "private_key"):
            value = getattr(n, key)
            _check(
                path,
                f"node.{key.replace('_', '-')}",
                value is not None and _exists(value),
                "an existing file (from the operator / `fedguard certs node`)",
                None if value is None else str(value),
            )
    if cfg.secagg.roster is not None:
        load_roster(
            cfg.secagg.roster,
            source=path,
            own_name=n.name,
            own_key=None if n.insecure else n.private_key,
        )
    if (d.partition_id is None) != (d.num_partitions is None):
        raise invalid(
            "data.partition-id",
            allowed="set together with data.num-partitions",
            got=d.partition_id,
            source=path,
        )
    if d.num_partitions is not None and d.partition_id is not None:
        _check(
            path,
            "data.partition-id",
            0 <= d.partition_id < d.num_partitions,
            f"an integer in [0, {d.num_partitions})",
            d.partition_id,
        )
    _check(
        path,
        "data.validation-share",
        0 <= d.validation_share < 1,
        "a number in [0, 1) (0: every record trains)",
        d.validation_share,
    )
    _check(
        path,
        "data.schema",
        d.schema is None or _exists(d.schema),
        "an existing schema file (TOML)",
        None if d.schema is None else str(d.schema),
    )
    # Beyond ~100 a DP bound says nothing about one record: such a value is a typo.
    _check(
        path, "privacy.max-epsilon", 0 < p.max_epsilon <= 100, "a number in (0, 100]", p.max_epsilon
    )
    if p.run_epsilon is not None:
        _check(
            path,
            "privacy.run-epsilon",
            0 < p.run_epsilon <= p.max_epsilon,
            f"a number in (0, max-epsilon = {p.max_epsilon:g}]",
            p.run_epsilon,
        )
    _check(path, "privacy.delta", 0 < p.delta <= 0.01, "a number in (0, 0.01]", p.delta)
    _check(
        path,
        "privacy.min-noise-multiplier",
        p.min_noise_multiplier >= 0,
        "a number >= 0",
        p.min_noise_multiplier,
    )
    _check(
        path,
        "privacy.max-noise-multiplier",
        p.max_noise_multiplier > max(p.min_noise_multiplier, 0),
        f"a number > min-noise-multiplier ({p.min_noise_multiplier:g})",
        p.max_noise_multiplier,
    )
    _check(
        path,
        "privacy.max-local-epochs",
        p.max_local_epochs >= 1,
        "an integer >= 1",
        p.max_local_epochs,
    )
    _check(path, "privacy.accountant", p.accountant in ACCOUNTANTS, ACCOUNTANTS, p.accountant)
    return cfg


def _only(raw: dict[str, Any], allowed: set[str], path: Path, prefix: str) -> None:
    for key in raw:
        if key not in allowed:
            raise invalid(
                f"{prefix}{key}",
                allowed="a known key: " + ", ".join(sorted(allowed)),
                got=key,
                source=path,
            )


def _section(raw: dict[str, Any], name: str, cls: type[T], path: Path) -> T:
    values = raw.get(name, {})
    if not isinstance(values, dict):
        raise invalid(name, allowed="a [section]", got=values, source=path)
    fields = {f.name.replace("_", "-"): f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    _only(values, set(fields), path, f"{name}.")
    kwargs = {
        fields[k].name: coerce(
            f"{name}.{k}", v, fields[k].type, source=path, finite=True, path=_path
        )
        for k, v in values.items()
    }
    return cls(**kwargs)


def _path(key: str, value: object, source: str | Path | None) -> Path:
    """A path value, ``~`` expanded, relative to the config file ``source``."""
    if not isinstance(value, str):
        raise invalid(key, allowed="a path string", got=value, source=source)
    try:
        p = Path(value).expanduser()
    except RuntimeError:  # ~user of a user this machine does not know
        raise invalid(key, allowed="a path (~user must exist)", got=value, source=source) from None
    return p if p.is_absolute() else (Path(source or ".").resolve().parent / p)


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # e.g. a name too long for the file system
        return False


def _check(path: Path, key: str, ok: bool, allowed: str | tuple[str, ...], got: object) -> None:
    if not ok:
        raise invalid(key, allowed=allowed, got=got, source=path)
