"""``node.toml``, each node's own file (hospital, bank): its sections, defaults and checks.

The node's privacy policy lives here ([privacy]), with what it demands of secure
aggregation ([secagg]). Read with :mod:`fedguard.deploy_toml`; every error is one line
naming the file, the ``section.key``, what is allowed and the value received. The public
front door is :mod:`fedguard.deploy_config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fedguard._toml import read_toml
from fedguard.config import ACCOUNTANTS
from fedguard.deploy.certs import _NODE_NAME as NODE_NAME
from fedguard.deploy.roster import load_roster
from fedguard.deploy_toml import (
    check_key,
    check_task_spec,
    only_keys,
    path_exists,
    read_section,
)
from fedguard.errors import invalid

__all__ = [
    "DataSection",
    "NodeConfig",
    "NodeSecAggSection",
    "NodeSection",
    "PolicySection",
    "load_node_config",
]


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


def load_node_config(path: Path) -> NodeConfig:
    raw = read_toml(path)
    only_keys(raw, {"node", "data", "privacy", "secagg"}, path, "")
    node = raw.get("node", {})
    if not isinstance(node, dict):
        raise invalid("node", allowed="a [section]", got=node, source=path)
    if "name" not in node:
        raise invalid("node.name", allowed="the node's name", got=None, source=path)
    cfg = NodeConfig(
        source=path.resolve(),
        node=read_section(raw, "node", NodeSection, path),
        data=read_section(raw, "data", DataSection, path),
        privacy=read_section(raw, "privacy", PolicySection, path),
        secagg=read_section(raw, "secagg", NodeSecAggSection, path),
    )
    mn = cfg.secagg.min_neighbours
    check_key(path, "secagg.min-neighbours", mn >= 1, "an integer >= 1", mn)
    mc = cfg.secagg.max_colluding_nodes
    check_key(path, "secagg.max-colluding-nodes", mc >= 0, "an integer >= 0", mc)
    n, d, p = cfg.node, cfg.data, cfg.privacy
    check_task_spec(path, "data.task", d.task)
    # The rule of `fedguard certs node NAME`: the name goes into console and log lines.
    check_key(
        path,
        "node.name",
        bool(NODE_NAME.match(n.name)),
        "a letter or digit, then up to 62 of A-Z a-z 0-9 _ . -",
        n.name,
    )
    host, _, port = n.server.rpartition(":")
    check_key(
        path,
        "node.server",
        bool(host) and port.isdigit() and 1 <= int(port) <= 65535,
        "HOST:PORT with a port 1-65535",
        n.server,
    )
    check_key(
        path,
        "node.state-dir",
        not n.state_dir.exists() or n.state_dir.is_dir(),
        "a folder (created if missing)",
        str(n.state_dir),
    )
    if n.port is not None:
        check_key(path, "node.port", 1 <= n.port <= 65535, "a port 1-65535", n.port)
    if not n.insecure:
        for key in ("ca_cert", "private_key"):
            value = getattr(n, key)
            check_key(
                path,
                f"node.{key.replace('_', '-')}",
                value is not None and path_exists(value),
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
        check_key(
            path,
            "data.partition-id",
            0 <= d.partition_id < d.num_partitions,
            f"an integer in [0, {d.num_partitions})",
            d.partition_id,
        )
    check_key(
        path,
        "data.validation-share",
        0 <= d.validation_share < 1,
        "a number in [0, 1) (0: every record trains)",
        d.validation_share,
    )
    check_key(
        path,
        "data.schema",
        d.schema is None or path_exists(d.schema),
        "an existing schema file (TOML)",
        None if d.schema is None else str(d.schema),
    )
    # Beyond ~100 a DP bound says nothing about one record: such a value is a typo.
    check_key(
        path, "privacy.max-epsilon", 0 < p.max_epsilon <= 100, "a number in (0, 100]", p.max_epsilon
    )
    if p.run_epsilon is not None:
        check_key(
            path,
            "privacy.run-epsilon",
            0 < p.run_epsilon <= p.max_epsilon,
            f"a number in (0, max-epsilon = {p.max_epsilon:g}]",
            p.run_epsilon,
        )
    check_key(path, "privacy.delta", 0 < p.delta <= 0.01, "a number in (0, 0.01]", p.delta)
    check_key(
        path,
        "privacy.min-noise-multiplier",
        p.min_noise_multiplier >= 0,
        "a number >= 0",
        p.min_noise_multiplier,
    )
    check_key(
        path,
        "privacy.max-noise-multiplier",
        p.max_noise_multiplier > max(p.min_noise_multiplier, 0),
        f"a number > min-noise-multiplier ({p.min_noise_multiplier:g})",
        p.max_noise_multiplier,
    )
    check_key(
        path,
        "privacy.max-local-epochs",
        p.max_local_epochs >= 1,
        "an integer >= 1",
        p.max_local_epochs,
    )
    check_key(path, "privacy.accountant", p.accountant in ACCOUNTANTS, ACCOUNTANTS, p.accountant)
    return cfg
