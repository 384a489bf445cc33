"""The Flower engine's own ServerApp and ClientApp: a simulation over Flower's Message API.

Both are built from the simulation's config (:func:`make_server_app`,
:func:`make_client_app`), so nothing of the simulation travels in a message: a train
message is the deployed one (``fedguard.transport.messages.encode_train``), and the deployed
ClientApp (``fedguard.client.app``) has no simulation branch at all. The round itself
(cohort sampling, running weighted sum, server update, evaluation) is
:func:`fedguard.fl.loop.run_rounds`, the same function the in-process engine runs; the
exchange with the virtual clients is the deployed server's
(:func:`fedguard.transport.grid.exchange_round`: the same reply vetting), and each virtual
client trains with :class:`fedguard.fl.local.LocalTrainer`, the same local round as a
deployed node.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedguard.config import SimulationConfig, load_simulation_config
from fedguard.errors import RefusalError
from fedguard.files import ACCOUNTANT_FILE
from fedguard.fl.data import federated_data, initial_model
from fedguard.fl.limits import MAX_UPDATE_NORM
from fedguard.fl.local import LocalResult, LocalTrainer
from fedguard.fl.loop import (
    ClientUpdate,
    Refusal,
    RoundRecord,
    TrainRequest,
    client_generator,
    request_for,
    run_rounds,
)
from fedguard.fl.participants import Participant, Participants
from fedguard.fl.strategies import server_optimizer
from fedguard.privacy import AccountantStore
from fedguard.simulations.virtual_clients import budget_for, client_state_dir
from fedguard.task import Metrics, evaluate, get_weights, set_weights
from fedguard.task.lazy_records import in_memory
from fedguard.transport.grid import describe_nodes, exchange_round, wait_for_nodes
from fedguard.transport.messages import (
    ERROR_BUDGET_REFUSED,
    ERROR_CLIENT_FAILED,
    DescriptionValue,
    decode_request,
    encode_description,
    encode_reply,
    encode_train,
    result_metrics,
)

__all__ = ["make_client_app", "make_server_app"]

_log = logging.getLogger(__name__)

# How long the server waits for a round's replies before counting the missing as dropped.
ROUND_TIMEOUT_S = 600.0
PARTITION = "partition-id"  # the node config key Flower's simulation engine sets


def make_client_app(*, config: SimulationConfig, state_dir: Path) -> ClientApp:
    """The ClientApp of ``config``'s virtual clients, each keeping its state in ``state_dir``.

    Flower's simulation engine sets each virtual node's ``partition-id``: that is its
    client id, its partition of the data and its state folder
    (:func:`~fedguard.simulations.virtual_clients.client_state_dir`). The config and the
    folder come with the app, never from a message.
    """
    app = ClientApp()
    config_json = json.dumps(config.to_dict(), sort_keys=True)
    folder = str(state_dir)

    @app.query("describe")
    def describe(message: Message, context: Context) -> Message:
        cid = _client_id(context)
        info: dict[str, DescriptionValue] = {
            "name": f"client-{cid:05d}",
            "client-id": cid,
            "num-examples": 0,
        }
        return Message(encode_description(info), reply_to=message)

    @app.train()
    def train(message: Message, context: Context) -> Message:
        try:
            weights, request = decode_request(message)
            result = _train(config_json, folder, _client_id(context), weights, request)
        except RefusalError as exc:
            return Message(Error(code=ERROR_BUDGET_REFUSED, reason=str(exc)), reply_to=message)
        except Exception as exc:  # the server logs the reason and counts the client dropped
            _log.exception("virtual client %s: round failed", context.node_config.get(PARTITION))
            reason = f"{type(exc).__name__}: {exc}"
            return Message(Error(code=ERROR_CLIENT_FAILED, reason=reason), reply_to=message)
        cid = _client_id(context)
        metrics = {"client-id": cid, **result_metrics(result)}
        content = encode_reply(weights=result.weights, metrics=metrics)
        return Message(content, reply_to=message)

    return app


def _client_id(context: Context) -> int:
    """A virtual node's partition id (Flower's simulation engine sets it)."""
    return int(context.node_config[PARTITION])


@functools.lru_cache(maxsize=2)
def _trainer(config_json: str) -> LocalTrainer:
    """One DP-wrapped model per worker process and simulation (a speed-up only)."""
    config = load_simulation_config(overrides=json.loads(config_json))
    return LocalTrainer(model=initial_model(config, federated_data(config)), dp=not config.no_dp)


def _train(
    config_json: str, state_dir: str, cid: int, weights: list[np.ndarray], request: TrainRequest
) -> LocalResult:
    config = load_simulation_config(overrides=json.loads(config_json))
    torch.set_num_threads(config.threads)
    data = federated_data(config)
    idx = data.partitions[cid]
    ds = in_memory(data.dataset, where="--engine flower")
    return _trainer(config_json).run(
        global_weights=weights,
        x=torch.from_numpy(ds.x_train[idx]),
        y=torch.from_numpy(ds.y_train[idx]),
        request=request,
        generator=client_generator(
            seed=config.seed, server_round=request.server_round, client_id=cid
        ),
        budget=budget_for(config),
        store=AccountantStore(path=client_state_dir(Path(state_dir), cid) / ACCOUNTANT_FILE),
    )


def make_server_app(
    *,
    config: SimulationConfig,
    state_dir: Path,
    on_round: Callable[[RoundRecord, list[np.ndarray]], None],
) -> ServerApp:
    """A ServerApp that runs ``config``'s federation over whatever grid Flower gives it.

    ``state_dir`` is unused here (the clients keep their state there: see
    :func:`make_client_app`); it is taken so both apps are built from the same pair.
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        torch.set_num_threads(config.threads)
        data = federated_data(config)
        ds = in_memory(data.dataset, where="--engine flower")
        model = initial_model(config, data)
        info = describe_nodes(grid, wait_for_nodes(grid, config.clients))
        # A virtual client's name is its client id.
        clients = Participants(
            Participant(name=str(cid), node_id=node, client_id=cid)
            for node, cid in ((node, int(v["client-id"])) for node, v in info.items())
        )
        x_test, y_test = torch.from_numpy(ds.x_test), torch.from_numpy(ds.y_test)

        def train_cohort(
            server_round: int, cohort: list[int], weights: list[np.ndarray]
        ) -> Iterator[ClientUpdate | Refusal]:
            content = encode_train(weights=weights, request=request_for(config, server_round))
            return exchange_round(
                grid=grid,
                server_round=server_round,
                cohort=clients.cohort(cohort),
                content=content,
                timeout=ROUND_TIMEOUT_S,
                expect=weights,
                max_update_norm=MAX_UPDATE_NORM,
            )

        def evaluate_global(weights: list[np.ndarray]) -> Metrics:
            set_weights(model, weights)
            return evaluate(model=model, x=x_test, y=y_test, num_classes=ds.num_classes)

        run_rounds(
            first_round=1,
            last_round=config.rounds,
            seed=config.seed,
            num_clients=config.clients,
            cohort_size=config.cohort_size,
            weights=get_weights(model),
            server=server_optimizer(
                strategy=config.strategy,
                server_lr=config.server_lr,
                server_momentum=config.server_momentum,
            ),
            train_cohort=train_cohort,
            evaluate=evaluate_global,
            on_round=on_round,
            dp=not config.no_dp,
        )

    return app
