"""Which nodes a deployed run talks to, and by what name (#15.1).

A node is named by the key it was enrolled under (``state-dir/enrolment.json``: name ->
Flower node id), never by what it says it is; a key deleted from keys-dir revokes its node
(:mod:`fedguard.server.enrolment`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from flwr.serverapp import Grid

from fedguard.console import printable
from fedguard.deploy.certs import _NODE_NAME as NODE_NAME  # the rule of `fedguard certs node NAME`
from fedguard.deploy.flower import flower_env
from fedguard.deploy_config import FederationConfig
from fedguard.fl.participants import Cohort
from fedguard.server.cohort import task_query
from fedguard.server.enrolment import Enrolment, Revocation
from fedguard.server.run_files import RunStoppedError
from fedguard.transport.grid import Describer, NodeWaitError, wait_for_nodes

__all__ = [
    "NODE_GRACE_S",
    "NODE_NAME",
    "enrolled_names",
    "gather_nodes",
    "live_cohort",
    "revocations",
]

NODE_GRACE_S = 20.0


def enrolled_names(cfg: FederationConfig) -> dict[int, str] | None:
    """Flower node id -> the name its key was enrolled under; None without node auth."""
    if cfg.server.insecure or cfg.server.keys_dir is None:
        return None
    records = Enrolment(keys_dir=cfg.server.keys_dir, state_dir=cfg.state_dir, env={}).records()
    # A name that is not a valid node name cannot come from `fedguard certs node`.
    return {
        int(e["node_id"]): name if NODE_NAME.match(name) else f"node-{e['node_id']}"
        for name, e in records.items()
        if not e.get("revoked_at")
    }


def revocations(
    cfg: FederationConfig, *, say: Callable[[str], None]
) -> Callable[[], dict[int, Revocation]]:
    """Look at keys-dir (each call): unregister nodes whose key left it; all revoked ids.

    Without node authentication (insecure, or no keys-dir) nobody is enrolled, so nobody
    can be revoked.
    """
    keys_dir = cfg.server.keys_dir
    if cfg.server.insecure or keys_dir is None:
        return dict
    enrolment = Enrolment(
        keys_dir=keys_dir, state_dir=cfg.state_dir, env=flower_env(cfg.state_dir / "flwr")
    )

    def check() -> dict[int, Revocation]:
        found = enrolment.revoke_removed()
        for r in found.new:
            say(
                f"revoked {r.name}: {r.reason}; node {r.node_id} unregistered from the "
                "SuperLink: it is sent nothing more and its calls are refused"
            )
        for r, error in found.failed:
            say(
                f"revoking {r.name} ({r.reason}): unregistering node {r.node_id} failed "
                f"({printable(error)}); it is sent nothing, and unregistering is tried again "
                "next round"
            )
        return found.revoked

    return check


def gather_nodes(
    grid: Grid,
    cfg: FederationConfig,
    *,
    expected: Mapping[int, str] | None = None,
    fit_count: Callable[[dict[int, dict[str, Any]]], int] = len,
    say: Callable[[str], None] = lambda line: None,
) -> dict[int, dict[str, Any]]:
    """Describe the connected nodes until every expected one answered, or enough of them
    fit the task (``fit_count`` >= min-nodes) and a grace period passed.

    ``expected`` names the enrolled, unrevoked nodes by id (None without enrolment: then
    every connected node is waited for). Nodes connect one by one (a fresh start, a server
    restart), so the first ``min-nodes`` to connect may not fit together (a node demanding
    more neighbours than are there yet): the grace period starts only once enough fit.
    """
    f = cfg.federation
    deadline = time.monotonic() + f.round_timeout
    grace_end: float | None = None
    info: dict[int, dict[str, Any]] = {}
    describer = Describer(grid, task=task_query(cfg))
    asked = 0
    said = False
    while True:
        try:
            nodes = wait_for_nodes(grid, f.min_nodes, wait_s=max(1.0, deadline - time.monotonic()))
        except NodeWaitError:
            nodes = sorted(grid.get_node_ids())
        missing = [n for n in nodes if n not in info]
        if missing:
            # A node busy with a killed run's last message (after a server restart) may
            # answer each ask later than its wait: a reply to an earlier ask counts too
            # (Describer), and each ask waits longer.
            asked += 1
            wait = min(NODE_GRACE_S * asked, max(1.0, deadline - time.monotonic()))
            info.update(describer.ask(missing, timeout=wait))
        enough = len(info) >= f.min_nodes and fit_count(info) >= f.min_nodes
        absent = sorted(name for n, name in (expected or {}).items() if n not in info)
        if enough:
            grace_end = grace_end or time.monotonic() + NODE_GRACE_S
            if (not absent and all(n in info for n in nodes)) or time.monotonic() > grace_end:
                return info
        if absent and not said:
            until = (grace_end if enough and grace_end else deadline) - time.monotonic()
            say(
                f"waiting up to {max(0.0, until):.0f}s for {', '.join(absent)} "
                f"({len(info)} of {len(expected or {})} enrolled nodes answered)"
            )
            said = True
        if time.monotonic() > deadline:
            if len(info) >= f.min_nodes:
                return info  # the caller names which nodes fit and why the others do not
            raise RunStoppedError(
                f"stopped before round 1: only {len(info)} of {f.min_nodes} "
                f"nodes answered within {f.round_timeout:.0f}s"
            )
        time.sleep(0.5)


def live_cohort(
    grid: Grid,
    cfg: FederationConfig,
    *,
    server_round: int,
    cohort: Cohort,
    say: Callable[[str], None],
) -> Cohort:
    """The cohort's connected nodes; while fewer than min-nodes are, waits up to
    round-timeout for them, then stops the run with one line (#15.3)."""
    f = cfg.federation
    deadline = time.monotonic() + f.round_timeout
    said = False
    while True:
        online = set(grid.get_node_ids())
        live = cohort.without(p.client_id for p in cohort if p.node_id not in online)
        if len(live) >= min(f.min_nodes, len(cohort)):
            return live
        off = ", ".join(p.name for p in cohort if p.node_id not in online)
        if time.monotonic() > deadline:
            raise RunStoppedError(
                f"stopped in round {server_round}: {len(live)} of the {f.min_nodes} nodes "
                f"needed are connected ({off} offline for {f.round_timeout:.0f}s)"
            )
        if not said:
            say(f"round {server_round}: waiting up to {f.round_timeout:.0f}s for {off}")
            said = True
        time.sleep(1.0)
