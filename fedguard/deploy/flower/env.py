"""The environment of every Flower process fedguard starts, and fedguard's own settings.

Patch 4 (no code changed): the SuperExec that starts each ClientApp (and the SuperLink's,
each ServerApp) polls every 1 s for a task; Flower reads
``FLWR_SUPEREXEC_TASK_POLL_INTERVAL`` for it, and :data:`FAST_POLL_ENV` sets it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "FAST_POLL_ENV",
    "PATCHES_ENV",
    "PRELOAD_ENV",
    "UNSAFE_ANY_BUNDLE_ENV",
    "flower_env",
]

FAST_POLL_ENV: dict[str, str] = {
    # SuperExec task poll (flwr/supercore/superexec/run_superexec.py; default 1 s, range
    # 0.01-60). Read by the SuperExec the SuperNode starts (ClientApp tasks) and by the one
    # the SuperLink starts (ServerApp). The only poll/interval setting Flower 1.39 reads
    # from the environment. 0.1 s costs ~10 cheap loopback HTTP calls/s per SuperExec.
    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",
}
"""Environment for every Flower process fedguard starts (merged by :func:`flower_env`)."""

PATCHES_ENV = "FEDGUARD_SUPERNODE_PATCHES"
"""Which patches the SuperNode entry point applies: comma-separated ``poll,backoff,warm,...``."""

PRELOAD_ENV = "FEDGUARD_CLIENTAPP_PRELOAD"
"""Comma-separated modules the warm executor imports once (e.g. ``torch,opacus``)."""

UNSAFE_ANY_BUNDLE_ENV = "FEDGUARD_UNSAFE_ANY_BUNDLE"
"""``=1``: ``python -m fedguard.deploy.flower supernode`` accepts any app bundle (benchmarks
of Flower's transport with their own app). `fedguard client` never reads it."""


def flower_env(flwr_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a Flower process: quiet, offline, state inside ``flwr_home``."""
    env = dict(os.environ)
    env.update(
        {
            "FLWR_HOME": str(flwr_home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "RAY_USAGE_STATS_ENABLED": "0",
            # Flower's launchers spawn helpers by bare name; they live beside our python.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        }
    )
    env.update(FAST_POLL_ENV)
    env.update(extra or {})
    return env
