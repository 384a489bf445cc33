"""The in-process engine: every virtual client trained in one loop, in one process.

No messages, no serialisation, no per-client processes (the approach of Apple's
pfl-research): one model object and one DP wrapping are reused for every client, client
data is preloaded as tensors, and updates are folded into a running sum. The client
training itself is :class:`fedguard.fl.local.LocalTrainer`, the same code the
Flower ClientApp runs. With ``--secagg`` each round runs the SecAgg+ protocol
(:mod:`fedguard.privacy.secagg`) with every party in this process. ``--engine ray`` runs
the same loop with each round's cohort sharded over Ray workers
(:mod:`fedguard.simulations.ray_engine`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from fedguard.config import SimulationConfig, resolve_device
from fedguard.fl.data import FederatedData, initial_model
from fedguard.fl.local import LocalTrainer
from fedguard.fl.loop import RoundRecord, TrainCohort, run_rounds
from fedguard.fl.strategies import server_optimizer
from fedguard.privacy.client_dp import ClientLevelAccounting
from fedguard.simulations.cohort_trainers import VirtualClients, cohort_trainer
from fedguard.simulations.process import own_process
from fedguard.task import Metrics, evaluate, get_weights, set_weights
from fedguard.task.lazy_records import LazyDataset, evaluate_records, in_memory

__all__ = ["client_level", "run_inprocess"]


def client_level(config: SimulationConfig) -> ClientLevelAccounting:
    """The client-level accounting of ``--client-dp``: the deployed server's for the same
    m-of-N draw (:class:`~fedguard.privacy.client_dp.ClientLevelAccounting`), RDP whatever
    ``--accountant`` says (that option is the sample-level accountant)."""
    return ClientLevelAccounting(
        noise_multiplier=config.client_noise,
        num_clients=config.clients,
        cohort_size=config.cohort_size,
        delta=config.delta,
    )


class _Evaluator:
    """The global model on the held-out set, on the engine's device."""

    def __init__(self, *, model: torch.nn.Module, data: FederatedData, device: torch.device):
        ds = data.dataset
        self.model, self.num_classes = model, ds.num_classes
        self.lazy = ds if isinstance(ds, LazyDataset) else None  # read in batches
        if self.lazy is None:
            self.x = torch.from_numpy(in_memory(ds, where="evaluation").x_test).to(device)
            self.y = torch.from_numpy(ds.y_test).to(device)

    def __call__(self, global_weights: list[np.ndarray]) -> Metrics:
        set_weights(self.model, global_weights)
        if self.lazy is not None:
            return evaluate_records(
                model=self.model,
                data=self.lazy.test,
                y=self.lazy.y_test,
                num_classes=self.num_classes,
            )
        return evaluate(model=self.model, x=self.x, y=self.y, num_classes=self.num_classes)


def run_inprocess(
    *,
    config: SimulationConfig,
    data: FederatedData,
    state_dir: Path,
    on_round: Callable[[RoundRecord, list[np.ndarray]], None],
) -> list[np.ndarray]:
    """Run the whole federation; ``on_round`` gets each round's record and global weights."""
    own_process(threads=config.threads)  # torch's threads, glibc's heap
    device = torch.device(resolve_device(config.device))
    # Model, DP wrapping and data move to the device once; clients only load weights.
    trainer = LocalTrainer(model=initial_model(config, data).to(device), dp=not config.no_dp)
    weights = get_weights(trainer.model)
    with _cohort_trainer(
        config=config, data=data, trainer=trainer, device=device, state_dir=state_dir
    ) as train_cohort:
        return run_rounds(
            first_round=1,
            last_round=config.rounds,
            seed=config.seed,
            num_clients=config.clients,
            cohort_size=config.cohort_size,
            weights=weights,
            server=server_optimizer(
                strategy=config.strategy,
                server_lr=config.server_lr,
                server_momentum=config.server_momentum,
            ),
            train_cohort=train_cohort,
            evaluate=_Evaluator(model=trainer.model, data=data, device=device),
            on_round=on_round,
            dp=not config.no_dp,
            client_epsilon=client_level(config).epsilon if config.client_dp else None,
        )


@contextmanager
def _cohort_trainer(
    *,
    config: SimulationConfig,
    data: FederatedData,
    trainer: LocalTrainer,
    device: torch.device,
    state_dir: Path,
) -> Iterator[TrainCohort]:
    """This process's cohort trainer, or Ray workers' (``--engine ray``); either writes
    every client's accountant file when the run ends, also after an error."""
    if config.engine == "ray":
        from fedguard.simulations.ray_engine import ray_cohort  # imports Ray

        with ray_cohort(config=config, data=data, state_dir=state_dir) as sharded:
            yield sharded
        return
    clients = VirtualClients(config=config, data=data, device=device, state_dir=state_dir)
    try:
        yield cohort_trainer(config=config, trainer=trainer, clients=clients)
    finally:
        clients.flush()  # also after an error: what was spent is on disk
