"""fedguard's Flower ClientApp.

Flower rebuilds the ClientApp for every message, so nothing that matters lives in this
object: the accountant is restored from the node's state folder every round (otherwise
epsilon would silently reset to one round's worth, the flaw of Flower's own Opacus
example). What is cached per process (loaded data, the DP-wrapped model) is only a
speed-up and is rebuilt identically when missing.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import torch
from flwr.app import Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedguard.client.training import BudgetExceededError, LocalTrainer
from fedguard.client.virtual import budget_for, client_state_dir
from fedguard.config import load_simulation_config
from fedguard.federation import client_generator, federated_data, initial_model
from fedguard.messages import (
    ERROR_BUDGET_REFUSED,
    ERROR_CLIENT_FAILED,
    decode_request,
    decode_simulation,
    encode_reply,
)
from fedguard.privacy import AccountantStore

__all__ = ["app"]

_log = logging.getLogger(__name__)

app = ClientApp()


def _client_id(context: Context) -> int:
    """A virtual node's partition id (Flower's simulation engine sets it)."""
    return int(context.node_config["partition-id"])


@app.query("describe")
def describe(message: Message, context: Context) -> Message:
    """Tell the server which client id this node holds (it samples cohorts by id)."""
    return Message(
        RecordDict({"node": MetricRecord({"client-id": _client_id(context)})}), reply_to=message
    )


@functools.lru_cache(maxsize=2)
def _trainer(config_json: str) -> LocalTrainer:
    """One DP-wrapped model per worker process and simulation (a speed-up only)."""
    config = load_simulation_config(overrides=json.loads(config_json))
    data = federated_data(config)
    return LocalTrainer(model=initial_model(config, data), dp=not config.no_dp)


@app.train()
def train(message: Message, context: Context) -> Message:
    """Train one round on this node's data, within its privacy budget, and reply."""
    cid = _client_id(context)
    try:
        weights, request = decode_request(message)
        config, state_dir = decode_simulation(message)
        torch.set_num_threads(config.threads)
        data = federated_data(config)
        idx = data.partitions[cid]
        trainer = _trainer(json.dumps(config.to_dict(), sort_keys=True))
        result = trainer.run(
            global_weights=weights,
            x=torch.from_numpy(data.dataset.x_train[idx]),
            y=torch.from_numpy(data.dataset.y_train[idx]),
            request=request,
            generator=client_generator(
                seed=config.seed, server_round=request.server_round, client_id=cid
            ),
            budget=budget_for(config),
            store=AccountantStore(path=client_state_dir(Path(state_dir), cid) / "accountant.json"),
        )
    except BudgetExceededError as exc:
        return Message(Error(code=ERROR_BUDGET_REFUSED, reason=str(exc)), reply_to=message)
    except Exception as exc:  # the server logs the reason; the node keeps serving
        _log.exception("client %d: round failed", cid)
        return Message(
            Error(code=ERROR_CLIENT_FAILED, reason=f"{type(exc).__name__}: {exc}"), reply_to=message
        )
    metrics: dict[str, float | int] = {
        "client-id": cid,
        "num-examples": result.num_examples,
        "train-loss": result.train_loss,
        "steps": result.steps,
    }
    if result.epsilon is not None:
        metrics.update(
            {
                "epsilon": result.epsilon,
                "delta": float(result.delta or 0.0),
                "noise-multiplier": float(result.noise_multiplier or 0.0),
                "sample-rate": float(result.sample_rate or 0.0),
            }
        )
    return Message(encode_reply(weights=result.weights, metrics=metrics), reply_to=message)
