"""Fuzzing the state files a node or server reads back besides configs, ledgers,
accountants and checkpoints (``test_fuzz_files.py``): a node's run plans, its stored
reply, its stored secure-aggregation update, and the server's enrolment record.

Each loader may only accept the file or raise its documented error: ``StateFileError``
(the node refuses the run) for ``run-plans.json``, ``DataError`` for
``last-reply.safetensors`` (the node then trains the round again, counted), ``SecAggError``
for ``secagg-update.npz``, ``EnrolmentError`` for ``enrolment.json``.
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
from fuzzing import FUZZ, mutated, only
from hypothesis import given
from hypothesis import strategies as st
from safetensors.numpy import save as st_save

from fedguard.client.budget import RunPlan, plan_run
from fedguard.client.node import read_stored_reply
from fedguard.client.secure import read_stored_update
from fedguard.errors import DataError, StateFileError
from fedguard.files import ENROLMENT_FILE, PLANS_FILE
from fedguard.fl.local import LocalResult
from fedguard.privacy import Accountant, GaussianEvent
from fedguard.privacy.secagg import SecAggError
from fedguard.server.enrolment import Enrolment, EnrolmentError

RUN, FINGERPRINT, KEY = "fed/abc", "hmac:" + "ab" * 32, "cd" * 32


def _plan(state: Path) -> RunPlan:
    return plan_run(
        state_dir=state,
        run=RUN,
        fingerprint=FINGERPRINT,
        epsilon_after=_fresh_epsilon_after,
        run_epsilon_after=_fresh_epsilon_after,
        round_event=GaussianEvent(noise_multiplier=1.0, sample_rate=0.1, steps=10),
        planned_rounds=5,
        max_epsilon=3.0,
        run_epsilon=None,
        min_noise_multiplier=0.0,
        max_noise_multiplier=10.0,
        delta=1e-5,
        accountant="rdp",
    )


def _fresh_epsilon_after(event: GaussianEvent) -> float:
    """A data set whose records have spent nothing yet."""
    return Accountant(method="rdp").epsilon_after(event, delta=1e-5)


@pytest.fixture(scope="module")
def real_plans(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    state = tmp_path_factory.mktemp("plans")
    _plan(state)
    return (state / PLANS_FILE).read_bytes()


def _load_plans(state: Path, raw: bytes) -> None:
    state.mkdir(exist_ok=True)
    (state / PLANS_FILE).write_bytes(raw)
    got = only(StateFileError, lambda: _plan(state))
    assert got is None or (isinstance(got, RunPlan) and got.noise_multiplier > 0)


@FUZZ
@given(raw=st.binary(max_size=200))
def test_run_plans_of_random_bytes(raw: bytes, tmp_path: Path):
    _load_plans(tmp_path / "s", raw)


@FUZZ
@given(data=st.data())
def test_run_plans_mutated(data: st.DataObject, real_plans: bytes, tmp_path: Path):
    _load_plans(tmp_path / "s", data.draw(mutated(real_plans)))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"noise_multiplier": 0.0}, "noise_multiplier: expected a valid float, got 0.0"),
        ({"noise_multiplier": "1"}, "noise_multiplier: expected a valid float"),
        ({"planned_rounds": True}, "planned_rounds: expected a valid int"),
        ({"extra": 1}, "expected the fields"),
    ],
)
def test_a_tampered_run_plan_is_refused_naming_the_field(
    change: dict, match: str, real_plans: bytes, tmp_path: Path
):
    plans = json.loads(real_plans)
    (key,) = plans
    plans[key].update(change)
    state = tmp_path / "s"
    state.mkdir()
    (state / PLANS_FILE).write_text(json.dumps(plans))
    with pytest.raises(StateFileError, match=rf"run plan .*{match}.*refusing"):
        _plan(state)


def _reply_bytes(key: str = KEY) -> bytes:
    result = LocalResult(
        weights=[np.ones((2, 3), np.float32), np.zeros(3, np.float32)],
        num_examples=40,
        train_loss=0.5,
        steps=4,
        epsilon=1.2,
        delta=1e-5,
        noise_multiplier=1.1,
        sample_rate=0.25,
    )
    fields = {k: v for k, v in dataclasses.asdict(result).items() if k != "weights"}
    tensors = {f"{i:05d}": w for i, w in enumerate(result.weights)}
    return st_save(tensors, metadata={"key": key, "result": json.dumps(fields)})


def _load_reply(path: Path, raw: bytes) -> None:
    path.write_bytes(raw)
    got = only(DataError, lambda: read_stored_reply(path, key=KEY))
    assert got is None or isinstance(got, LocalResult)


def test_the_stored_reply_reads_back(tmp_path: Path):
    path = tmp_path / "last-reply.safetensors"
    path.write_bytes(_reply_bytes())
    got = read_stored_reply(path, key=KEY)
    assert isinstance(got, LocalResult) and got.num_examples == 40 and len(got.weights) == 2
    assert read_stored_reply(path, key="other") is None  # another request's reply


@FUZZ
@given(raw=st.binary(max_size=300))
def test_stored_reply_of_random_bytes(raw: bytes, tmp_path: Path):
    _load_reply(tmp_path / "last-reply.safetensors", raw)


@FUZZ
@given(data=st.data())
def test_stored_reply_mutated(data: st.DataObject, tmp_path: Path):
    _load_reply(tmp_path / "last-reply.safetensors", data.draw(mutated(_reply_bytes())))


def _update_bytes() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, update=np.arange(6, dtype=np.float32), weight=np.array(40, dtype=np.int64))
    return buf.getvalue()


def _load_update(raw: bytes) -> None:
    got = only(SecAggError, lambda: read_stored_update(raw))
    assert got is None or (isinstance(got, tuple) and got[1] >= 0)


def test_the_stored_update_reads_back():
    update, weight = read_stored_update(_update_bytes())
    assert weight == 40 and update.tolist() == list(range(6))


@FUZZ
@given(raw=st.binary(max_size=300))
def test_stored_update_of_random_bytes(raw: bytes):
    _load_update(raw)


@FUZZ
@given(data=st.data())
def test_stored_update_mutated(data: st.DataObject):
    _load_update(data.draw(mutated(_update_bytes())))


def test_a_pickled_update_is_refused_not_loaded():
    buf = io.BytesIO()
    np.savez(buf, update=np.array([object()], dtype=object), weight=np.array(1))
    with pytest.raises(SecAggError, match="stored update unreadable"):
        read_stored_update(buf.getvalue())


REAL_RECORD = json.dumps(
    {
        "format": "fedguard-enrolment/1",
        "nodes": {
            "node-a": {
                "node_id": 12345,
                "key_sha256": "ab" * 32,
                "enrolled_at": "2026-11-27T10:00:00+00:00",
                "revoked_at": None,
                "reason": None,
            }
        },
    }
).encode()


def _load_record(tmp_path: Path, raw: bytes) -> None:
    (tmp_path / ENROLMENT_FILE).write_bytes(raw)
    enrolment = Enrolment(keys_dir=tmp_path, state_dir=tmp_path, env={})
    got = only(EnrolmentError, enrolment._load)
    assert got is None or isinstance(got, dict)


def test_the_real_record_format_loads(tmp_path: Path):
    (tmp_path / ENROLMENT_FILE).write_bytes(REAL_RECORD)
    record = Enrolment(keys_dir=tmp_path, state_dir=tmp_path, env={})._load()
    assert record["nodes"]["node-a"]["node_id"] == 12345


@FUZZ
@given(raw=st.binary(max_size=200))
def test_enrolment_record_of_random_bytes(raw: bytes, tmp_path: Path):
    _load_record(tmp_path, raw)


@FUZZ
@given(data=st.data())
def test_enrolment_record_mutated(data: st.DataObject, tmp_path: Path):
    _load_record(tmp_path, data.draw(mutated(REAL_RECORD)))
