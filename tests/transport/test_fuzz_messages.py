"""Fuzzing the message decoders: a reply's and a train request's records.

Random numeric ``.npy`` bytes, then flipped, cut or extended, in a reply's or a request's
weights record, with random metric and request values: ``decode_reply_content`` and
``decode_request`` raise only ``ValueError`` (one line), and what they accept is finite,
of the expected shapes, with an example count >= 1 and settings in range.
"""

from __future__ import annotations

import io
import types
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedguard.fl.limits import MAX_UPDATE_NORM
from fedguard.fl.loop import TrainRequest
from fedguard.transport.messages import decode_reply_content, decode_request, encode_train


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _reply(arrays: list[Array], metric_values: dict[str, Any]) -> RecordDict:
    record = ArrayRecord()
    for i, a in enumerate(arrays):
        record[str(i)] = a
    return RecordDict({"weights": record, "metrics": MetricRecord(metric_values)})


@st.composite
def arrays(draw: st.DrawFn) -> Array:
    """Numeric .npy bytes, then flipped, cut or extended."""
    dtype = draw(st.sampled_from(["<f4", "<f8", "<i4", "|b1", "<c8", ">f4"]))
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    data = bytearray(npy(np.zeros(shape, dtype=dtype)))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, max(0, len(data) - 1)))
        kind = draw(st.sampled_from(["flip", "cut", "extend"]))
        if kind == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del data[at:]
        else:
            data += draw(st.binary(max_size=16))
    return Array(dtype="float32", shape=(1,), stype="numpy.ndarray", data=bytes(data))


metric_values = st.dictionaries(
    st.sampled_from(["num-examples", "train-loss", "epsilon", "other"]),
    st.integers(-(2**63), 2**63 - 1) | st.floats(),
    max_size=4,
)


@settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(got=st.lists(arrays(), max_size=3), values=metric_values, expect=st.booleans())
def test_reply_decoding_of_random_arrays_raises_only_value_error(got, values, expect):
    content = _reply(got, values)
    global_weights = [np.zeros((3, 4), np.float32), np.zeros(4, np.float32)]
    try:
        reply = decode_reply_content(
            content, expect=global_weights if expect else None, max_update_norm=MAX_UPDATE_NORM
        )
    except ValueError as exc:
        assert "\n" not in str(exc)
        return
    assert all(np.all(np.isfinite(w)) for w in reply.weights)
    assert reply.metrics.get("num-examples", 1) >= 1  # absent: the node keeps its count


@settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    got=st.lists(arrays(), max_size=3),
    changes=st.dictionaries(
        st.sampled_from(["server-round", "local-epochs", "lr", "momentum", "model", "extra"]),
        st.none() | st.integers(-5, 5) | st.floats() | st.text(max_size=4) | st.booleans(),
        max_size=3,
    ),
)
def test_request_decoding_of_random_arrays_and_values_raises_only_value_error(got, changes):
    request = TrainRequest(server_round=1, local_epochs=1, batch_size=8, lr=0.1)
    content = encode_train(weights=[], request=request)
    record = ArrayRecord()
    for i, a in enumerate(got):
        record[str(i)] = a
    content["weights"] = record
    config = content.config_records["request"]
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    try:  # decode_request only reads .content (a Message needs a running Flower app)
        weights, decoded = decode_request(types.SimpleNamespace(content=content))
    except ValueError as exc:
        assert "\n" not in str(exc)
        return
    assert all(w.dtype.kind == "f" and np.all(np.isfinite(w)) for w in weights)
    assert decoded.local_epochs >= 1 and decoded.lr > 0
