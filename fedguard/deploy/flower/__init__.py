"""fedguard's adapter to Flower: every workaround, the version pin, and Flower's text.

A deployment round with trivial work takes ~6 s in stock Flower 1.39, almost all of it
waiting; two more problems only show under load, one bounds what an outsider can make
the SuperLink allocate, one keeps a node's memory to one copy of its libraries, and one
keeps a node from importing code a server sends. One module per workaround:

==  ==========================  ==========================================================
1   ``transport.poll``          a ServerApp pulls replies every 0.05 s, not 3 s (public API;
                                in ``fedguard.transport``: both engines use it)
2   ``supernode_poll``          a SuperNode polls every 0.1 s, 1 s once idle (was 3 s)
3   ``payload_backoff``         a payload not uploaded yet is retried after 0.05 s (was 1 s)
4   ``env``                     the SuperExec's task poll, 0.1 s (Flower's own setting)
5   ``warm_clientapp``,         the SuperNode starts fedguard's SuperExec, which forks each
    ``superexec_fork``          ClientApp from a pre-imported process (was ~3.6 s each)
6   ``sqlite_busy_timeout``     the SuperLink's SQLite waits 30 s for a lock (was 5 s)
7   ``heartbeat_retry``         a heartbeat survives INTERNAL/UNKNOWN (was fatal)
8   ``executor_zygote``         the SuperExec is a fork of the SuperNode (one copy of flwr)
9   ``sql_deferral``            no SQLAlchemy/Alembic in a node's processes (~28 MB each)
10  ``fleet_message_cap``       the Fleet API refuses messages larger than the task needs
11  ``heartbeat_interval``      heartbeats every 10 s (a crashed session ends in ~20 s)
12  ``bundle_check``            a run's app bundle is checked before anything is stored
--  ``plain_logs``              Flower's log lines without colour codes in log files
==  ==========================  ==========================================================

The ones that change Flower's code are in :data:`~fedguard.deploy.flower.registry.REGISTRY`
(apply, restore, check); each refuses any Flower but :data:`FLWR_VERSION` and checks that
what it replaces still looks as expected. :mod:`~fedguard.deploy.flower.cli_output` holds
every reading of Flower's command-line and log text; :mod:`~fedguard.deploy.flower.entry`
the ``python -m fedguard.deploy.flower`` entry points. What to do when Flower moves on:
``docs/flower-upgrade.md``.

Importing this package imports no Flower module.
"""

from fedguard.deploy.flower.bundle_check import patch_supernode_bundle_check
from fedguard.deploy.flower.env import (
    FAST_POLL_ENV,
    PATCHES_ENV,
    PRELOAD_ENV,
    UNSAFE_ANY_BUNDLE_ENV,
    flower_env,
)
from fedguard.deploy.flower.fleet_message_cap import MAX_MESSAGE_FLAG
from fedguard.deploy.flower.heartbeat_interval import HEARTBEAT_INTERVAL_S, HEARTBEAT_PATIENCE
from fedguard.deploy.flower.payload_backoff import patch_object_pull_backoff
from fedguard.deploy.flower.plain_logs import plain_console
from fedguard.deploy.flower.registry import REGISTRY, apply_all, check_all, restore_all
from fedguard.deploy.flower.version import FLWR_VERSION, check_flower_version

__all__ = [
    "FAST_POLL_ENV",
    "FLWR_VERSION",
    "HEARTBEAT_INTERVAL_S",
    "HEARTBEAT_PATIENCE",
    "MAX_MESSAGE_FLAG",
    "PATCHES_ENV",
    "PRELOAD_ENV",
    "REGISTRY",
    "UNSAFE_ANY_BUNDLE_ENV",
    "apply_all",
    "check_all",
    "check_flower_version",
    "flower_env",
    "patch_object_pull_backoff",
    "patch_supernode_bundle_check",
    "plain_console",
    "restore_all",
]
