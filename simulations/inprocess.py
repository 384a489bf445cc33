"""The in-process engine: every virtual client trained in one loop, in one process.

No messages, no serialisation, no per-client processes (the approach of Apple's
pfl-research): one model object and one DP wrapping are reused for every client, client
data is preloaded as tensors, and updates are folded into a running sum. The client
training itself is :class:`fedguard.client.training.LocalTrainer`, the same code the
Flower ClientApp runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from fedguard.client.training import BudgetExceededError, LocalTrainer
from fedguard.client.virtual import budget_for, client_state_dir
from fedguard.config import SimulationConfig
from fedguard.federation import (
    ClientUpdate,
    FedAvgM,
    FederatedData,
    Refusal,
    RoundRecord,
    client_generator,
    initial_model,
    request_for,
    run_rounds,
)
from fedguard.privacy import AccountantStore
from fedguard.task import Metrics, evaluate, get_weights, set_weights

__all__ = ["run_inprocess"]


def run_inprocess(
    *,
    config: SimulationConfig,
    data: FederatedData,
    state_dir: Path,
    on_round: Callable[[RoundRecord, list[np.ndarray]], None],
) -> list[np.ndarray]:
    """Run the whole federation; ``on_round`` gets each round's record and global weights."""
    # Small models are dominated by per-op overhead: one thread is several times faster
    # than two here (FLOWER-NOTES.md). The engine owns its process, so it may choose.
    torch.set_num_threads(config.threads)
    ds = data.dataset
    trainer = LocalTrainer(model=initial_model(config, data), dp=not config.no_dp)
    weights = get_weights(trainer.model)
    xs = [torch.from_numpy(ds.x_train[idx]) for idx in data.partitions]
    ys = [torch.from_numpy(ds.y_train[idx]) for idx in data.partitions]
    x_test, y_test = torch.from_numpy(ds.x_test), torch.from_numpy(ds.y_test)
    budget = budget_for(config)

    def train_cohort(
        server_round: int, cohort: list[int], global_weights: list[np.ndarray]
    ) -> Iterator[ClientUpdate | Refusal]:
        request = request_for(config, server_round)
        for cid in cohort:
            store = AccountantStore(path=client_state_dir(state_dir, cid) / "accountant.json")
            try:
                result = trainer.run(
                    global_weights=global_weights,
                    x=xs[cid],
                    y=ys[cid],
                    request=request,
                    generator=client_generator(
                        seed=config.seed, server_round=server_round, client_id=cid
                    ),
                    budget=budget,
                    store=store,
                )
            except BudgetExceededError as exc:
                yield Refusal(client_id=cid, reason=str(exc))
                continue
            yield ClientUpdate(
                client_id=cid,
                weights=result.weights,
                num_examples=result.num_examples,
                train_loss=result.train_loss,
                epsilon=result.epsilon,
            )

    def evaluate_global(global_weights: list[np.ndarray]) -> Metrics:
        set_weights(trainer.model, global_weights)
        return evaluate(model=trainer.model, x=x_test, y=y_test, num_classes=ds.num_classes)

    return run_rounds(
        first_round=1,
        last_round=config.rounds,
        seed=config.seed,
        num_clients=config.clients,
        cohort_size=config.cohort_size,
        weights=weights,
        server=FedAvgM(server_lr=config.server_lr, server_momentum=config.server_momentum),
        train_cohort=train_cohort,
        evaluate=evaluate_global,
        on_round=on_round,
        dp=not config.no_dp,
    )
