"""The records fedguard's ServerApp and ClientApp exchange over Flower's Message API.

One module owns every record name and key, and both halves encode/decode through it, so
they cannot drift apart. Only numpy arrays (Flower serialises them with
``allow_pickle=False``), numbers and strings cross the wire; a client reply carries its
updated weights and whitelisted metrics, nothing else.

Decoding never trusts the other side: a message with missing or extra records, an array
that is not a plain numeric ``.npy`` (checked from its header before anything is
allocated), NaN/Inf weights, a value of the wrong type or out of range raises
``ValueError`` with one line naming what was expected and what came.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedguard.fl.local import LocalResult
from fedguard.fl.loop import TrainRequest
from fedguard.transport.records import check_finite, check_records, check_update, decode_arrays

__all__ = [
    "ERROR_BUDGET_REFUSED",
    "ERROR_CLIENT_FAILED",
    "REPLY_METRIC_KEYS",
    "TrainReply",
    "attach_receipt",
    "decode_description",
    "decode_reply_content",
    "decode_request",
    "decode_secure_reply",
    "encode_description",
    "encode_reply",
    "encode_secure_reply",
    "encode_train",
    "receipt_payload",
    "result_metrics",
    "secagg_payload",
    "secagg_record",
]

# What a node's description may hold (Flower's config record values fedguard uses).
DescriptionValue: TypeAlias = str | int | float | bool | list[int]

# Application error codes in a client's error reply (Flower reserves small codes).
ERROR_BUDGET_REFUSED = 4001
ERROR_CLIENT_FAILED = 4002

_WEIGHTS = "weights"
_REQUEST = "request"
_METRICS = "metrics"
_SECAGG = "secagg"
_PAYLOAD = "payload"
_RECEIPT = "receipt"
_NODE = "node"

# The keys of a train request's config record (encode_train writes all of them).
_REQUEST_KEYS = frozenset(
    {
        "server-round",
        "local-epochs",
        "batch-size",
        "lr",
        "momentum",
        "max-grad-norm",
        "total-rounds",
        "federation",
        "model",
        "prox-mu",
        "run-id",
        "client-clip",
        "client-noise",
        "client-min-contributors",
        "class-weights",  # only when set: a node without it refuses a weighted round
    }
)

# Everything a client may tell the server about its round. Anything else is dropped.
REPLY_METRIC_KEYS: tuple[str, ...] = (
    "client-id",
    "num-examples",
    "train-loss",
    "steps",
    "epsilon",
    "delta",
    "noise-multiplier",
    "sample-rate",
)


def encode_train(
    *,
    weights: list[np.ndarray],
    request: TrainRequest,
    secagg: bytes | None = None,
) -> RecordDict:
    """Content of a ``train`` message: global weights, the round's request and the secure
    aggregation setup (a ``fedguard.v1.SecAggMessage``) when the round uses it. The same
    for a deployed node and a simulation's virtual client: a simulation's config comes
    with its ClientApp (``fedguard.simulations.flower_app``), never in a message."""
    content = RecordDict(
        {
            _WEIGHTS: ArrayRecord(weights),
            _REQUEST: ConfigRecord(
                {
                    "server-round": request.server_round,
                    "local-epochs": request.local_epochs,
                    "batch-size": request.batch_size,
                    "lr": request.lr,
                    "momentum": request.momentum,
                    "max-grad-norm": request.max_grad_norm,
                    "total-rounds": request.total_rounds,
                    "federation": request.federation,
                    "model": request.model,
                    "prox-mu": float(request.prox_mu),
                    "run-id": request.run_id,
                    "client-clip": float(request.client_clip),
                    "client-noise": float(request.client_noise),
                    "client-min-contributors": request.client_min_contributors,
                }
            ),
        }
    )
    if request.class_weights:
        weights_of_classes = [float(w) for w in request.class_weights]
        content.config_records[_REQUEST]["class-weights"] = weights_of_classes
    if secagg is not None:
        content[_SECAGG] = ConfigRecord({_PAYLOAD: secagg})
    return content


def decode_request(message: Message) -> tuple[list[np.ndarray], TrainRequest]:
    """Global weights and round request of a ``train`` message (``ValueError`` if malformed).

    Checked before the node does anything: exactly the records :func:`encode_train`
    writes, finite floating-point weights, every request key of its type and range.
    """
    content = message.content
    check_records(
        content,
        what="train request",
        required={_WEIGHTS: ArrayRecord, _REQUEST: ConfigRecord},
        optional={_SECAGG: ConfigRecord},
    )
    weights = decode_arrays(content.array_records[_WEIGHTS], what="train request weights")
    for i, w in enumerate(weights):
        if w.dtype.kind != "f":
            raise ValueError(f"train request weights[{i}]: expected floats, got {w.dtype}")
        check_finite(w, what=f"train request weights[{i}]")
    r = content.config_records[_REQUEST]
    unknown = sorted(set(r) - _REQUEST_KEYS)
    if unknown:
        raise ValueError(
            f"train request: expected keys among {sorted(_REQUEST_KEYS)}, got {unknown}"
        )
    request = TrainRequest(
        server_round=_int(r, "server-round", minimum=0),
        local_epochs=_int(r, "local-epochs", minimum=1),
        batch_size=_int(r, "batch-size", minimum=1),
        lr=_float(r, "lr", "a finite number > 0", lambda v: v > 0),
        momentum=_float(r, "momentum", "a number in [0, 1)", lambda v: 0 <= v < 1),
        max_grad_norm=_float(r, "max-grad-norm", "a finite number > 0", lambda v: v > 0),
        total_rounds=_int(r, "total-rounds", minimum=1),
        federation=_str(r, "federation"),
        model=_str(r, "model"),
        # Absent from servers older than FedProx / client-level DP support: off.
        prox_mu=_float(r, "prox-mu", _NON_NEGATIVE, _non_negative, default=0.0),
        run_id=_str(r, "run-id", default=""),
        client_clip=_float(r, "client-clip", _NON_NEGATIVE, _non_negative, default=0.0),
        client_noise=_float(r, "client-noise", _NON_NEGATIVE, _non_negative, default=0.0),
        client_min_contributors=_int(r, "client-min-contributors", minimum=0, default=0),
        class_weights=_class_weights(r),
    )
    return weights, request


def _class_weights(record: ConfigRecord) -> tuple[float, ...]:
    """Per-class loss weights, each in (0, 1] (fedguard.privacy.class_weights); () if absent.

    Whatever the server sends, clipping bounds each example by max-grad-norm, so no
    weight can raise a node's sensitivity; out-of-range values are still refused."""
    from fedguard.privacy.class_weights import check_class_weights

    if "class-weights" not in record:
        return ()
    value = record.get("class-weights")
    # A bare string or number is refused as itself (check_class_weights names the value).
    received: Sequence[Any] = value if isinstance(value, list) else [value]
    return check_class_weights(received, key="train request: class-weights")


def encode_description(info: Mapping[str, DescriptionValue]) -> RecordDict:
    """A node's answer to ``query.describe``: at least ``name`` and ``client-id``."""
    return RecordDict({_NODE: ConfigRecord(dict(info))})


def decode_description(content: RecordDict) -> dict[str, Any]:
    """A node's description (``ValueError`` if malformed), without any record count.

    Exactly one ``node`` config record, whose ``name`` is a string and ``client-id`` an
    integer; what else it holds is the node's claim, for the caller to check. A record
    count (``num-examples``) is dropped: weights never come from a description.
    """
    check_records(content, what="description", required={_NODE: ConfigRecord}, optional={})
    record = content.config_records[_NODE]
    name, cid = record.get("name"), record.get("client-id")
    if not isinstance(name, str):
        raise ValueError(f"description name: expected a string, got {_got(record, 'name')}")
    if isinstance(cid, bool) or not isinstance(cid, int):
        raise ValueError(
            f"description client-id: expected an integer, got {_got(record, 'client-id')}"
        )
    return {k: v for k, v in record.items() if k != "num-examples"}


@dataclass(frozen=True)
class TrainReply:
    weights: list[np.ndarray]
    metrics: dict[str, float]


def encode_reply(*, weights: list[np.ndarray], metrics: dict[str, float | int]) -> RecordDict:
    values: dict[str, int | float | list[int] | list[float]] = dict(_checked_metrics(metrics))
    return RecordDict({_WEIGHTS: ArrayRecord(weights), _METRICS: MetricRecord(values)})


def result_metrics(result: LocalResult) -> dict[str, float | int]:
    """Every reply metric a local round produced (:data:`REPLY_METRIC_KEYS` but the client
    id); what a node actually sends is its own choice among them."""
    metrics: dict[str, float | int] = {
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
    return metrics


def decode_reply_content(
    content: RecordDict,
    *,
    expect: Sequence[np.ndarray] | None = None,
    max_update_norm: float | None = None,
) -> TrainReply:
    """Weights and whitelisted metrics of a client's reply (ValueError when malformed).

    With ``expect`` (the global weights sent) the reply must hold as many arrays, each of
    the same dtype and shape; with ``max_update_norm`` as well, the update (reply minus
    ``expect``) must have at most that L2 norm.
    """
    check_records(
        content,
        what="reply",
        required={_WEIGHTS: ArrayRecord, _METRICS: MetricRecord},
        optional={_RECEIPT: ConfigRecord},
    )
    weights = decode_arrays(content.array_records[_WEIGHTS], what="reply weights")
    metrics = _metrics(content)
    if expect is not None:
        check_update(weights, expect=expect, max_update_norm=max_update_norm)
    else:
        for i, w in enumerate(weights):
            check_finite(w, what=f"reply weights[{i}]")
    return TrainReply(weights=weights, metrics=metrics)


def secagg_payload(content: RecordDict) -> bytes | None:
    """The ``fedguard.v1.SecAggMessage`` bytes a message carries, if any."""
    if _SECAGG not in content.config_records:
        return None
    value = content.config_records[_SECAGG].get(_PAYLOAD)
    if not isinstance(value, bytes):
        raise ValueError("secagg record lacks its payload bytes")
    return value


def secagg_record(payload: bytes) -> RecordDict:
    """Content of a secure-aggregation stage message (either direction)."""
    return RecordDict({_SECAGG: ConfigRecord({_PAYLOAD: payload})})


def encode_secure_reply(*, metrics: dict[str, float | int], payload: bytes) -> RecordDict:
    """A train reply under secure aggregation: metrics and public keys, no weights."""
    content = secagg_record(payload)
    content[_METRICS] = MetricRecord(dict(_checked_metrics(metrics)))
    return content


def decode_secure_reply(content: RecordDict) -> tuple[dict[str, float], bytes]:
    """Metrics and key advertisement of a train reply under secure aggregation."""
    check_records(
        content,
        what="reply under secure aggregation (no arrays)",
        required={_SECAGG: ConfigRecord, _METRICS: MetricRecord},
        optional={_RECEIPT: ConfigRecord},
    )
    payload = secagg_payload(content)
    if payload is None:
        raise ValueError("secagg record lacks its payload bytes")
    return _metrics(content), payload


def attach_receipt(content: RecordDict, receipt: bytes) -> RecordDict:
    """Add a node's privacy receipt (``fedguard.v1.PrivacyReceipt`` bytes) to a reply."""
    content[_RECEIPT] = ConfigRecord({_PAYLOAD: receipt})
    return content


def receipt_payload(content: RecordDict) -> bytes | None:
    """The privacy receipt bytes a reply carries, if any."""
    if _RECEIPT not in content.config_records:
        return None
    value = content.config_records[_RECEIPT].get(_PAYLOAD)
    if not isinstance(value, bytes):
        raise ValueError("receipt record lacks its payload bytes")
    return value


def _checked_metrics(metrics: dict[str, float | int]) -> dict[str, float | int]:
    unknown = sorted(set(metrics) - set(REPLY_METRIC_KEYS))
    if unknown:
        raise ValueError(f"reply metrics: expected keys among {REPLY_METRIC_KEYS}, got {unknown}")
    return metrics


def _metrics(content: RecordDict) -> dict[str, float]:
    raw = content.metric_records[_METRICS]
    metrics = {
        k: float(v) for k, v in raw.items() if k in REPLY_METRIC_KEYS and isinstance(v, int | float)
    }
    bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
    if bad:
        raise ValueError(f"reply metrics: expected finite values, got non-finite {bad}")
    # Absent: the node keeps its record count (under secure aggregation, or by its policy).
    n = metrics.get("num-examples")
    if n is not None and (n < 1 or not n.is_integer()):
        raise ValueError(f"reply num-examples: expected an integer >= 1, got {n}")
    return metrics


_NON_NEGATIVE = "a finite number >= 0"


def _non_negative(v: float) -> bool:
    return v >= 0


def _int(
    record: ConfigRecord, key: str, *, minimum: int | None = None, default: int | None = None
) -> int:
    if default is not None and key not in record:
        return default
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"request {key}: expected an integer, got {_got(record, key)}")
    if minimum is not None and value < minimum:
        raise ValueError(f"request {key}: expected an integer >= {minimum}, got {value!r}")
    return value


def _str(record: ConfigRecord, key: str, *, default: str | None = None) -> str:
    if default is not None and key not in record:
        return default
    value = record.get(key)
    if not isinstance(value, str):
        raise ValueError(f"request {key}: expected a string, got {_got(record, key)}")
    return value


def _float(
    record: ConfigRecord,
    key: str,
    allowed: str = "a finite number",
    ok: Callable[[float], bool] = math.isfinite,
    *,
    default: float | None = None,
) -> float:
    if default is not None and key not in record:
        return default
    value = record.get(key)
    real = not isinstance(value, bool) and isinstance(value, int | float)
    if not (real and math.isfinite(value) and ok(float(value))):  # type: ignore[arg-type]
        raise ValueError(f"request {key}: expected {allowed}, got {_got(record, key)}")
    return float(value)  # type: ignore[arg-type]


def _got(record: ConfigRecord, key: str) -> str:
    return repr(record[key]) if key in record else "nothing (missing)"
