"""The in-process engine: every virtual client trained in one loop, in one process.

No messages, no serialisation, no per-client processes (the approach of Apple's
pfl-research): one model object and one DP wrapping are reused for every client, client
data is preloaded as tensors, and updates are folded into a running sum. The client
training itself is :class:`fedguard.client.training.LocalTrainer`, the same code the
Flower ClientApp runs. With ``--secagg`` each round runs the SecAgg+ protocol
(:mod:`fedguard.privacy.secagg`) with every party in this process.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from fedguard.client.training import (
    BudgetExceededError,
    CohortMember,
    LocalResult,
    LocalTrainer,
)
from fedguard.client.virtual import budget_for
from fedguard.client.virtual_scaling import reserve_scaling, scale_client_rows
from fedguard.config import SimulationConfig, resolve_device
from fedguard.errors import ConfigError
from fedguard.federation import (
    ClientUpdate,
    FederatedData,
    Refusal,
    RoundRecord,
    SecureMean,
    client_generator,
    initial_model,
    request_for,
    run_rounds,
)
from fedguard.fl.seeds import Stream, stream_rng
from fedguard.optimizers import FedAvgM
from fedguard.privacy.client_dp import (
    ClientDP,
    ClientLevelSpent,
    client_level_spent,
    clip_and_noise,
)
from fedguard.privacy.secagg import (
    SecAggAbortedError,
    dequantize_mean,
    make_params,
    secure_sum_in_process,
)
from fedguard.simulations.client_state import AccountantCache
from fedguard.task import Metrics, evaluate, get_weights, set_weights

__all__ = ["client_level", "run_inprocess", "vectorizes"]

_log = logging.getLogger(__name__)


def _update(client_id: int, result: LocalResult) -> ClientUpdate:
    return ClientUpdate(
        client_id=client_id,
        weights=result.weights,
        num_examples=result.num_examples,
        train_loss=result.train_loss,
        epsilon=result.epsilon,
    )


def client_level(config: SimulationConfig, *, rounds: int) -> ClientLevelSpent:
    """Client-level epsilon after ``rounds`` (``--client-dp``): the deployed server's
    accounting for the same m-of-N draw, RDP whatever ``--accountant`` says (that option
    is the sample-level accountant)."""
    return client_level_spent(
        noise_multiplier=config.client_noise,
        num_clients=config.clients,
        cohort_size=min(config.cohort_size, config.clients),
        rounds=rounds,
        delta=config.delta,
    )


def vectorizes(*, mode: str, model: torch.nn.Module) -> bool:
    """Whether ``--vectorize mode`` trains ``model``'s DP clients together.

    ``auto``: only models whose trainable layers are all linear; for those a round of
    100 small clients was 3-8x faster here, while convolutional models (per-example
    convolution gradients dominate) measured 0.8-1.1x on CPU.
    """
    if mode == "off":
        return False
    trainable = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
    return mode == "on" or all(isinstance(m, torch.nn.Linear) for m in trainable)


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
    device = torch.device(resolve_device(config.device))
    ds = data.dataset
    # Model, DP wrapping and data move to the device once; clients only load weights.
    trainer = LocalTrainer(model=initial_model(config, data).to(device), dp=not config.no_dp)
    weights = get_weights(trainer.model)
    xs = [torch.from_numpy(ds.x_train[idx]).to(device) for idx in data.partitions]
    ys = [torch.from_numpy(ds.y_train[idx]).to(device) for idx in data.partitions]
    x_test, y_test = torch.from_numpy(ds.x_test).to(device), torch.from_numpy(ds.y_test).to(device)
    # scaling = "dp" columns: each client scales its own rows with its own DP estimate,
    # charged to its accountant before its first round (client/virtual_scaling.py).
    plan = ds.dp_scaling
    budget = reserve_scaling(budget_for(config), plan)
    scaling_event = budget.reserved[-1] if plan is not None and budget is not None else None
    accountants = AccountantCache(state_dir=state_dir)  # files written once, at the end
    scaled: set[int] = set()

    def prepare(cid: int) -> None:
        if plan is None or cid in scaled:
            return
        rows = scale_client_rows(
            ds.x_train[data.partitions[cid]],
            plan=plan,
            event=scaling_event,
            seed=config.seed,
            client_id=cid,
        )
        if scaling_event is not None and budget is not None:  # charged before any step
            store = accountants.store(cid)
            acc = store.load(method=budget.accountant)
            acc.compose(scaling_event)
            store.save(acc)
        xs[cid] = torch.from_numpy(rows).to(device)
        scaled.add(cid)

    def train_one(
        server_round: int, cid: int, global_weights: list[np.ndarray]
    ) -> ClientUpdate | Refusal:
        prepare(cid)
        store = accountants.store(cid)
        try:
            result = trainer.run(
                global_weights=global_weights,
                x=xs[cid],
                y=ys[cid],
                request=request_for(config, server_round),
                generator=client_generator(
                    seed=config.seed, server_round=server_round, client_id=cid, device=device
                ),
                budget=budget,
                store=store,
            )
        except BudgetExceededError as exc:
            return Refusal(client_id=cid, reason=str(exc))
        return _update(cid, result)

    def train_cohort(
        server_round: int, cohort: list[int], global_weights: list[np.ndarray]
    ) -> Iterator[ClientUpdate | Refusal]:
        for cid in cohort:
            yield train_one(server_round, cid, global_weights)

    def train_cohort_vectorized(
        server_round: int, cohort: list[int], global_weights: list[np.ndarray]
    ) -> Iterator[ClientUpdate | Refusal]:
        assert budget is not None
        for cid in cohort:
            prepare(cid)
        members = [
            CohortMember(
                client_id=cid,
                x=xs[cid],
                y=ys[cid],
                generator=client_generator(
                    seed=config.seed, server_round=server_round, client_id=cid, device=device
                ),
                store=accountants.store(cid),
            )
            for cid in cohort
        ]
        for cid, result in trainer.run_cohort(
            global_weights=global_weights,
            members=members,
            request=request_for(config, server_round),
            budget=budget,
        ):
            if isinstance(result, BudgetExceededError):
                yield Refusal(client_id=cid, reason=str(result))
            else:
                yield _update(cid, result)

    def plain_engine() -> Callable[..., Iterator[ClientUpdate | Refusal]]:
        linear = all(
            isinstance(m, torch.nn.Linear)
            for m in trainer.model.modules()
            if any(True for _ in m.parameters(recurse=False))
        )
        if (
            config.vectorize == "off"
            or not trainer.private
            or (config.vectorize == "auto" and not linear)
        ):
            return train_cohort
        try:
            trainer.cohort_trainer()
        except ConfigError as exc:
            _log.info("training clients one at a time: %s", exc)
            return train_cohort
        return train_cohort_vectorized

    def client_mechanism(min_contributors: int) -> ClientDP:
        return ClientDP(
            clip_norm=config.client_clip,
            noise_multiplier=config.client_noise,
            min_contributors=min_contributors,
        )

    def client_epsilon(server_round: int) -> float:
        return client_level(config, rounds=server_round).epsilon

    def train_cohort_secure(
        server_round: int, cohort: list[int], global_weights: list[np.ndarray]
    ) -> Iterator[ClientUpdate | Refusal | SecureMean]:
        # Training happens inside the masked-input stage, one client at a time: the
        # engine holds one update at once, never the cohort's.
        params = make_params(
            run="simulation",
            server_round=server_round,
            cohort=len(cohort),
            clip_range=config.secagg_clip_range,
            bits=config.secagg_bits,
            # Client-level DP averages with equal weights (its sensitivity is one update).
            weight_cap=1 if config.client_dp else max(len(data.partitions[c]) for c in cohort),
            dropout_tolerance=config.secagg_dropout_tolerance,
            graph_seed=config.seed,
        )
        replies: list[ClientUpdate | Refusal] = []
        pending: dict[int, Future[ClientUpdate | Refusal]] = {}

        def start(slot: int) -> None:
            if slot <= len(cohort) and slot not in pending:
                pending[slot] = pool.submit(
                    train_one, server_round, cohort[slot - 1], global_weights
                )

        def input_for(slot: int) -> tuple[list[np.ndarray], int] | None:
            start(slot)
            reply = pending.pop(slot).result()
            # Train the next client while this one's update is masked: torch releases the
            # GIL in its kernels, so training and mask expansion overlap on two cores.
            start(slot + 1)
            if isinstance(reply, Refusal) or reply.weights is None:
                replies.append(reply)
                return None  # drops out after sharing keys: its masks are removed
            replies.append(dataclasses.replace(reply, weights=None))
            delta = [w - g for w, g in zip(reply.weights, global_weights, strict=True)]
            if config.client_dp:
                noised = clip_and_noise(
                    delta,
                    mechanism=client_mechanism(params.threshold),
                    rng=stream_rng(
                        seed=config.seed,
                        stream=Stream.CLIENT_NOISE,
                        ids=(server_round, reply.client_id),
                    ),
                )
                return noised.arrays, 1
            return delta, reply.num_examples

        try:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="train") as pool:
                total = secure_sum_in_process(
                    params=params,
                    input_for=input_for,
                    rng=stream_rng(seed=config.seed, stream=Stream.QUANTIZE, ids=(server_round,)),
                )
        except SecAggAbortedError as exc:
            _log.warning("round %d: %s", server_round, exc)
            yield from replies
            return
        mean, _ = dequantize_mean(
            total.total,
            clip_range=params.clip_range,
            bits=params.bits,
            shapes=[w.shape for w in global_weights],
        )
        yield from replies
        yield SecureMean(mean_update=mean, count=len(total.survivors), dropped=len(total.dropped))

    def evaluate_global(global_weights: list[np.ndarray]) -> Metrics:
        set_weights(trainer.model, global_weights)
        return evaluate(model=trainer.model, x=x_test, y=y_test, num_classes=ds.num_classes)

    try:
        return run_rounds(
            first_round=1,
            last_round=config.rounds,
            seed=config.seed,
            num_clients=config.clients,
            cohort_size=config.cohort_size,
            weights=weights,
            server=FedAvgM(server_lr=config.server_lr, server_momentum=config.server_momentum),
            train_cohort=train_cohort_secure if config.secagg else plain_engine(),
            evaluate=evaluate_global,
            on_round=on_round,
            dp=not config.no_dp,
            client_epsilon=client_epsilon if config.client_dp else None,
        )
    finally:
        accountants.flush()  # also after an error: what was spent is on disk
