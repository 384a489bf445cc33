"""The records fedguard's ServerApp and ClientApp exchange over Flower's Message API.

One module owns every record name and key, and both halves encode/decode through it, so
they cannot drift apart. Only numpy arrays (Flower serialises them with
``allow_pickle=False``), numbers and strings cross the wire; a client reply carries its
updated weights and whitelisted metrics, nothing else.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedguard.config import SimulationConfig, load_simulation_config
from fedguard.federation import TrainRequest

__all__ = [
    "attach_receipt",
    "receipt_payload",
    "ERROR_BUDGET_REFUSED",
    "ERROR_CLIENT_FAILED",
    "REPLY_METRIC_KEYS",
    "TrainReply",
    "decode_reply",
    "decode_reply_content",
    "decode_request",
    "decode_secure_reply",
    "decode_simulation",
    "encode_reply",
    "encode_secagg",
    "encode_secure_reply",
    "encode_train",
    "secagg_payload",
]

# Application error codes in a client's error reply (Flower reserves small codes).
ERROR_BUDGET_REFUSED = 4001
ERROR_CLIENT_FAILED = 4002

_WEIGHTS = "weights"
_REQUEST = "request"
_SIMULATION = "simulation"
_METRICS = "metrics"
_SECAGG = "secagg"
_PAYLOAD = "payload"
_RECEIPT = "receipt"

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
    simulation: SimulationConfig | None,
    state_dir: str | None,
    secagg: bytes | None = None,
) -> RecordDict:
    """Content of a ``train`` message: global weights, the round's request, the secure
    aggregation setup (a ``fedguard.v1.SecAggMessage``) when the round uses it and, for
    virtual clients only, the simulation they belong to."""
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
    if secagg is not None:
        content[_SECAGG] = ConfigRecord({_PAYLOAD: secagg})
    if simulation is not None:
        content[_SIMULATION] = ConfigRecord(
            {
                "config": json.dumps(simulation.to_dict()),
                "state-dir": state_dir or "",
            }
        )
    return content


def decode_request(message: Message) -> tuple[list[np.ndarray], TrainRequest]:
    content = message.content
    weights = content.array_records[_WEIGHTS].to_numpy_ndarrays()
    r = content.config_records[_REQUEST]
    request = TrainRequest(
        server_round=_int(r, "server-round"),
        local_epochs=_int(r, "local-epochs"),
        batch_size=_int(r, "batch-size"),
        lr=_float(r, "lr"),
        momentum=_float(r, "momentum"),
        max_grad_norm=_float(r, "max-grad-norm"),
        total_rounds=_int(r, "total-rounds"),
        federation=_str(r, "federation"),
        model=_str(r, "model"),
        # Absent from servers older than FedProx support: no proximal term.
        prox_mu=_float(r, "prox-mu") if "prox-mu" in r else 0.0,
        run_id=_str(r, "run-id") if "run-id" in r else "",
        client_clip=_float(r, "client-clip") if "client-clip" in r else 0.0,
        client_noise=_float(r, "client-noise") if "client-noise" in r else 0.0,
        client_min_contributors=(
            _int(r, "client-min-contributors") if "client-min-contributors" in r else 0
        ),
    )
    return weights, request


def decode_simulation(message: Message) -> tuple[SimulationConfig, str] | None:
    """The simulation a virtual client belongs to; None for a real (deployed) node."""
    if _SIMULATION not in message.content.config_records:
        return None
    record = message.content.config_records[_SIMULATION]
    raw = json.loads(str(record["config"]))
    return load_simulation_config(overrides=raw), str(record["state-dir"])


@dataclass(frozen=True)
class TrainReply:
    weights: list[np.ndarray]
    metrics: dict[str, float]


def encode_reply(*, weights: list[np.ndarray], metrics: dict[str, float | int]) -> RecordDict:
    values: dict[str, int | float | list[int] | list[float]] = dict(_checked_metrics(metrics))
    return RecordDict({_WEIGHTS: ArrayRecord(weights), _METRICS: MetricRecord(values)})


def decode_reply(message: Message) -> TrainReply:
    """Weights and whitelisted metrics of a client's reply (ValueError when malformed)."""
    return decode_reply_content(message.content)


def decode_reply_content(content: RecordDict) -> TrainReply:
    """:func:`decode_reply` on the records themselves."""
    if _WEIGHTS not in content.array_records or _METRICS not in content.metric_records:
        raise ValueError("reply lacks the weights or metrics record")
    weights = content.array_records[_WEIGHTS].to_numpy_ndarrays()
    return TrainReply(weights=weights, metrics=_metrics(content))


def secagg_payload(content: RecordDict) -> bytes | None:
    """The ``fedguard.v1.SecAggMessage`` bytes a message carries, if any."""
    if _SECAGG not in content.config_records:
        return None
    value = content.config_records[_SECAGG].get(_PAYLOAD)
    if not isinstance(value, bytes):
        raise ValueError("secagg record lacks its payload bytes")
    return value


def encode_secagg(payload: bytes) -> RecordDict:
    """Content of a secure-aggregation stage message (either direction)."""
    return RecordDict({_SECAGG: ConfigRecord({_PAYLOAD: payload})})


def encode_secure_reply(*, metrics: dict[str, float | int], payload: bytes) -> RecordDict:
    """A train reply under secure aggregation: metrics and public keys, no weights."""
    content = encode_secagg(payload)
    content[_METRICS] = MetricRecord(dict(_checked_metrics(metrics)))
    return content


def decode_secure_reply(content: RecordDict) -> tuple[dict[str, float], bytes]:
    """Metrics and key advertisement of a train reply under secure aggregation."""
    if content.array_records:
        raise ValueError("a reply under secure aggregation must not carry arrays")
    payload = secagg_payload(content)
    if payload is None or _METRICS not in content.metric_records:
        raise ValueError("reply lacks the secagg or metrics record")
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
    if not all(math.isfinite(v) for v in metrics.values()):
        raise ValueError("reply metrics are not finite")
    if metrics.get("num-examples", 0) < 1:
        raise ValueError("reply has no num-examples >= 1")
    return metrics


def _int(record: ConfigRecord, key: str) -> int:
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"request {key}: expected an integer, got {value!r}")
    return value


def _str(record: ConfigRecord, key: str) -> str:
    value = record[key]
    if not isinstance(value, str):
        raise ValueError(f"request {key}: expected a string, got {value!r}")
    return value


def _float(record: ConfigRecord, key: str) -> float:
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"request {key}: expected a finite number, got {value!r}")
    return float(value)
