"""The Flower engine: the simulation's own ServerApp and ClientApp
(:mod:`fedguard.simulations.flower_app`) on Flower's Simulation Engine (Ray), for parity
with deployment (the same messages, reply vetting and local round) and to scale out over a
Ray cluster.

It is slower than the in-process engine on one machine (Ray start-up, a worker process
per virtual node, serialised messages); see FLOWER-NOTES.md for the measured costs.

Flower 1.39 marks ``run_simulation`` deprecated in favour of ``flwr run`` against a
simulation SuperLink; it is still the only in-process entry point, and it stays behind
this one function so that a move is one contained change.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedguard.config import SimulationConfig
from fedguard.errors import ConfigError
from fedguard.fl.loop import RoundRecord

__all__ = ["ray_backend_config", "run_flower"]


def run_flower(
    *,
    config: SimulationConfig,
    state_dir: Path,
    on_round: Callable[[RoundRecord, list[np.ndarray]], None],
) -> None:
    """Run ``config`` on Flower's simulation engine; ``on_round`` as in the other engine."""
    # Ray and Flower read these at import/start: quiet, offline, state inside our folder.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise ConfigError(
            "--engine flower: Flower's simulation engine needs Ray, which is not installed: "
            "pip install 'fedguard[ray]' (or use --engine inprocess)"
        )
    from flwr.simulation import run_simulation

    from fedguard.simulations.flower_app import make_client_app, make_server_app

    # Flower logs its own deprecation of run_simulation at WARNING on every call.
    logging.getLogger("flwr").setLevel(logging.ERROR)
    state_dir = state_dir.resolve()
    run_simulation(
        server_app=make_server_app(config=config, state_dir=state_dir, on_round=on_round),
        client_app=make_client_app(config=config, state_dir=state_dir),
        num_supernodes=config.clients,
        backend_config=ray_backend_config(config=config),
    )


def ray_backend_config(*, config: SimulationConfig) -> dict[str, Any]:
    """Flower's ``backend_config`` for ``config``: per-client resources and Ray's own.

    Ray runs as many virtual clients at once as the fractions allow: with
    ``client-cpus = 0.5`` two per CPU, with ``client-gpus = 0.25`` at most four per GPU
    (GPU fractions limit scheduling; they do not cap a client's GPU memory).
    """
    import torch

    return {
        "client_resources": {"num_cpus": config.client_cpus, "num_gpus": config.client_gpus},
        "init_args": {
            "num_cpus": os.cpu_count() or 1,
            "num_gpus": torch.cuda.device_count(),
            "include_dashboard": False,
            "log_to_driver": False,
        },
    }
