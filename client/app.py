"""fedguard's Flower ClientApp.

Flower rebuilds the ClientApp for every message, so nothing that matters lives in this
object: the accountant is restored from the node's state folder every round (otherwise
epsilon would silently reset to one round's worth, the flaw of Flower's own Opacus
example). What is cached per process (loaded data, the DP-wrapped model) is only a
speed-up and is rebuilt identically when missing.
"""

from __future__ import annotations

import functools
import logging
import re
from pathlib import Path

from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp

from fedguard.client.events import append_event
from fedguard.client.node import node_runtime
from fedguard.client.secure import NodeSecAgg
from fedguard.deploy_config import NODE_CONFIG_KEY, NodeConfig, load_node_config
from fedguard.errors import RefusalError
from fedguard.fl.local import LocalResult
from fedguard.privacy.receipts import coarse_epsilon, without_count
from fedguard.task import set_weights
from fedguard.task.builtin import build_task_model
from fedguard.task.schema import load_schema
from fedguard.transport import encode_receipt
from fedguard.transport.messages import (
    ERROR_BUDGET_REFUSED,
    ERROR_CLIENT_FAILED,
    DescriptionValue,
    attach_receipt,
    decode_request,
    encode_description,
    encode_reply,
    encode_secure_reply,
    result_metrics,
    secagg_payload,
    secagg_record,
)

__all__ = ["NODE_CONFIG_KEY", "app"]

_NO_CONFIG = "this node was started without its fedguard node config"

_log = logging.getLogger(__name__)

app = ClientApp()


def _node_config_path(context: Context) -> str | None:
    """A deployed node is started by `fedguard client` with the path of its node.toml."""
    value = context.node_config.get(NODE_CONFIG_KEY)
    return str(value) if value else None


@app.query("describe")
def describe(message: Message, context: Context) -> Message:
    """Tell the server who this node is, and whether its data and policy fit the task.

    A deployed node describes its input shape, whether every label is a class id of the
    task (one bit, from the class count the query carries: never its label set), the
    digest of its feature schema and the policy limits it will enforce (#14.5). It never
    tells its record count here: the weight cap of a round is the federation's public
    ``weight-cap``, not learnt from the nodes (#13.6). Its name is a claim; the server
    names it by the key it was enrolled under.
    """
    path = _node_config_path(context)
    if path is None:
        reason = f"ValueError: {_NO_CONFIG}"
        return Message(Error(code=ERROR_CLIENT_FAILED, reason=reason), reply_to=message)
    info: dict[str, DescriptionValue] = {
        "name": node_runtime(path).config.node.name,
        "client-id": -1,
        **_description(path, message),
    }
    return Message(encode_description(info), reply_to=message)


def _description(path: str, message: Message) -> dict[str, DescriptionValue]:
    runtime = node_runtime(path)
    cfg = runtime.config
    p, sa = cfg.privacy, cfg.secagg
    out: dict[str, DescriptionValue] = {
        "input-shape": [int(v) for v in runtime.input_shape],
        "schema-digest": "" if cfg.data.schema is None else load_schema(cfg.data.schema).digest(),
        "max-local-epochs": p.max_local_epochs,
        "min-noise-multiplier": float(p.min_noise_multiplier),
        "max-noise-multiplier": float(p.max_noise_multiplier),
        "max-epsilon": float(p.max_epsilon),
        "delta": float(p.delta),
        "accountant": p.accountant,
        "reveal-count": p.reveal_count,
        "secagg-required": sa.required,
        "min-neighbours": sa.min_neighbours,
        # Whether it can take part in a secure round at all (#14.6): no roster, no round.
        "secagg-roster": sa.roster is not None,
        "max-colluding-nodes": sa.max_colluding_nodes,
    }
    if p.run_epsilon is not None:
        out["run-epsilon"] = float(p.run_epsilon)
    task = message.content.config_records.get("task")
    classes = None if task is None else task.get("num-classes")
    if isinstance(classes, int) and not isinstance(classes, bool):
        # Against the node's class count (declared by its schema, task or built-in set, and
        # every record checked against it at load), not its records' largest label: asked
        # with every k in turn, that answered which classes the node holds (red team).
        out["labels-fit"] = classes >= runtime.num_classes
    return out


@functools.lru_cache(maxsize=2)
def _node_config(path: str) -> NodeConfig:
    return load_node_config(Path(path))


@app.train()
def train(message: Message, context: Context) -> Message:
    """Train one round on this node's data, within its privacy budget, and reply."""
    who = _node_config_path(context) or "without a node config"
    # What the failing step was about: the server's request (its reason may go back), or
    # the node's own data and training (whose messages may quote records: they stay here).
    stage = "request"
    try:
        # Checked before anything else: records, finite weights, every key's type and range.
        weights, request = decode_request(message)
        path = _node_config_path(context)
        if path is None:
            raise ValueError(_NO_CONFIG)
        stage = "data"
        runtime = node_runtime(path)
        stage = "request"
        reveal = runtime.config.privacy.reveal_count
        # The node's weight in a secure sum: its record count only with its consent
        # (the sums' totals over changing cohorts would give the count away too).
        secure = NodeSecAgg(config=runtime.config, examples=len(runtime.y) if reveal else 1)
        # Policy first: a round the node would refuse is refused before any training.
        setup = secure.check_request(setup_bytes=secagg_payload(message.content), request=request)
        # Weights that do not fit the task's model are the server's flaw: named to it.
        set_weights(
            build_task_model(
                name=request.model,
                installed=runtime.config.data.task,
                input_shape=runtime.input_shape,
                num_classes=runtime.num_classes,
            ),
            weights,
        )
        stage = "training"
        result = runtime.train(
            model_name=request.model, weights=weights, request=request, secure=setup is not None
        )
        receipt = runtime.receipt(request)
        metrics = _deployed_metrics(result, reveal_count=reveal and setup is None)
        if receipt is not None and not (reveal and setup is None):
            receipt = without_count(receipt)
        if setup is not None:
            delta = [w - g for w, g in zip(result.weights, weights, strict=True)]
            advert = secure.begin(setup=setup, update=delta, request=request)
            content = encode_secure_reply(metrics=metrics, payload=advert)
        else:
            content = encode_reply(weights=result.weights, metrics=metrics)
        if receipt is not None:
            attach_receipt(content, encode_receipt(receipt))
        return Message(content, reply_to=message)
    except RefusalError as exc:
        reason = str(exc)
        if stage != "training":  # a refusal from training is in the node's log already
            _node_event(context, f"a request refused before training: {reason}")
        if _node_config_path(context) is not None and not _reveals_count(context):
            # Its exact epsilon figures give the record count away (audit): rounded up.
            reason = _EXACT_FIGURE.sub(lambda m: f"{coarse_epsilon(float(m[0])):.1f}", reason)
        return Message(Error(code=ERROR_BUDGET_REFUSED, reason=reason), reply_to=message)
    except Exception as exc:  # the server logs the reason; the node keeps serving
        _log.exception("node %s: round failed", who)
        if stage != "training":
            _node_event(context, f"a request failed ({stage}): {type(exc).__name__}: {exc}")
        reason = f"{type(exc).__name__}: {exc}"
        if stage != "request" and _node_config_path(context) is not None:
            # A data or training error can quote a record's values, the file or a row count.
            reason = (
                f"the node could not {'load its data' if stage == 'data' else 'train'} "
                f"({type(exc).__name__}); the details are in the node's own log"
            )
        return Message(Error(code=ERROR_CLIENT_FAILED, reason=reason), reply_to=message)


def _node_event(context: Context, message: str) -> None:
    """One line in a deployed node's event log (client/events.py); nothing otherwise."""
    path = _node_config_path(context)
    if path is None:
        return
    try:
        append_event(_node_config(path).node.state_dir, message)
    except Exception:  # an unreadable config: the round's own error says why
        _log.warning("node %s: event not logged: %s", path, message)


@app.query("secagg")
def secagg(message: Message, context: Context) -> Message:
    """Answer a secure-aggregation stage (share keys, masked input, unmask)."""
    path = _node_config_path(context)
    try:
        payload = secagg_payload(message.content)
        if path is None or payload is None:
            raise ValueError("secure aggregation runs on deployed nodes only, with a payload")
        # The node's config only: these stages need no data (and no data loading).
        reply = NodeSecAgg(config=_node_config(path)).step(payload)
    except Exception as exc:  # the server counts the node as dropped and logs the reason
        _log.warning("node %s: secure aggregation stage failed: %s", path, exc)
        return Message(
            Error(code=ERROR_CLIENT_FAILED, reason=f"{type(exc).__name__}: {exc}"), reply_to=message
        )
    return Message(secagg_record(reply), reply_to=message)


_EXACT_FIGURE = re.compile(r"\d+\.\d{2,}")


def _reveals_count(context: Context) -> bool:
    path = _node_config_path(context)
    try:
        return path is not None and _node_config(path).privacy.reveal_count
    except Exception:  # an unreadable config: reveal nothing
        return False


def _deployed_metrics(result: LocalResult, *, reveal_count: bool) -> dict[str, float | int]:
    """What a deployed node tells the server about its round, besides the update.

    Never the training loss (computed from the records, not DP-protected). The record
    count and the DP-SGD figures that give it away (steps, sample rate, the calibrated
    noise multiplier) only with ``reveal_count``: under secure aggregation never (#13.6);
    epsilon (rounded up to 0.1 without ``reveal_count``) and delta always.
    """
    metrics = result_metrics(result)
    del metrics["train-loss"]
    if not reveal_count:
        for key in ("num-examples", "steps", "sample-rate", "noise-multiplier"):
            metrics.pop(key, None)
        if "epsilon" in metrics:  # its sixth digit gives n away too (audit)
            metrics["epsilon"] = coarse_epsilon(float(metrics["epsilon"]))
    return metrics
