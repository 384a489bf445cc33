"""The deployed server tells the truth and trusts nodes for nothing (#15.1, #15.3, #17.1,
#14.5), piece by piece with real files and Flower messages; the whole of it against real
processes is tests/deploy/test_server_truth.py.

Before: a node's self-reported name was the key of the cohort (a duplicate crashed the
server) and was printed raw (a newline forged a console line); the SuperLink's own
"node unavailable" reply was dropped as "not asked" and the node reported as "no reply
within 60s" a second into the round; a round that aggregated nothing counted as done;
the launcher trusted the checkpoint (a failed run of an earlier config looked finished)
and every run wrote into the same results folder.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Error, Message, RecordDict
from harness.describe_grid import FEDERATION, DescribeGrid, federation, flower_task

from fedguard.console import printable
from fedguard.deploy_config import CONFIG_KEY, load_node_config
from fedguard.errors import ConfigError, DataError
from fedguard.fl.loop import ClientUpdate, Refusal, RoundShortError, run_rounds
from fedguard.fl.participants import Participants
from fedguard.fl.strategies import FedAvgM
from fedguard.server import deploy_app
from fedguard.server.cohort import check_cohort
from fedguard.server.launcher import ServerFailedError, _check_finished
from fedguard.server.run_files import (
    RunOutcome,
    read_outcome,
    run_files,
    write_outcome,
)
from fedguard.task import Metrics
from fedguard.transport.grid import exchange_round

_federation = federation


@pytest.fixture(autouse=True)
def _flower_task(monkeypatch):
    flower_task(monkeypatch)


# ---------------------------------------------------------------- names (#15.1)


def test_a_name_with_a_newline_cannot_forge_a_console_line():
    forged = "node-a\nround 3: accuracy 0.9999 loss 0.0001\x1b[2K\r"
    out = printable(forged)
    assert "\n" not in out and "\r" not in out and "\x1b" not in out
    assert out == "node-a\\nround 3: accuracy 0.9999 loss 0.0001\\x1b[2K\\r"
    assert len(printable("x" * 5000)) == 200


@pytest.mark.parametrize("name", ["../../etc", "node-a\nround 3: accuracy 0.9999", "", "a b"])
def test_node_name_is_checked_at_config_load(tmp_path: Path, name: str):
    toml = tmp_path / "node.toml"
    toml.write_text(f"[node]\nname = {json.dumps(name)}\ninsecure = true\n")
    with pytest.raises(ConfigError, match=r"node\.name: expected a letter or digit") as err:
        load_node_config(toml)
    assert "\n" not in str(err.value)


def test_a_valid_node_name_loads(tmp_path: Path):
    toml = tmp_path / "node.toml"
    toml.write_text('[node]\nname = "hospital-a.2"\ninsecure = true\n')
    assert load_node_config(toml).node.name == "hospital-a.2"


def test_nodes_are_named_by_their_enrolled_key_not_their_claim(tmp_path: Path, monkeypatch, capsys):
    cfg = _federation(tmp_path)
    # Node 22 was enrolled as node-c but says it is node-a (node 11's enrolled name).
    monkeypatch.setattr(
        deploy_app, "enrolled_names", lambda _cfg: {11: "node-a", 22: "node-c", 33: "node-b"}
    )
    grid = DescribeGrid({11: "node-a", 22: "node-a", 33: "node-b\nround 9: accuracy 1.0"})
    run = deploy_app.DeployedRun(grid=grid, cfg=cfg)
    described = run.gather()
    assert {n: node for n, (node, _) in described.items()} == {
        "node-a": 11,
        "node-b": 33,
        "node-c": 22,
    }
    out = capsys.readouterr().out
    assert 'node-c calls itself "node-a"; named by its key' in out
    assert not any(line.startswith("round 9") for line in out.splitlines())


# ---------------------------------------------------------------- cohort (#14.5)


def test_a_node_whose_data_or_policy_does_not_fit_is_left_out_by_name(tmp_path: Path):
    cfg = _federation(tmp_path)
    ok = {"input-shape": [1, 8, 8], "labels-fit": True, "max-local-epochs": 5}
    fit, misfits = check_cohort(
        cfg,
        {
            "node-a": ok,
            "node-b": ok,
            "node-c": {**ok, "input-shape": [1, 4, 4]},
            "node-d": {**ok, "labels-fit": False},
            "node-e": {**ok, "max-local-epochs": 0},
            "node-f": {"name": "old"},
        },
    )
    assert fit == ["node-a", "node-b"]
    why = {m.name: m.reason for m in misfits}
    assert why["node-c"] == "input shape [1, 4, 4], the task's is [1, 8, 8]"
    assert "labels outside the task's 10 classes" in why["node-d"]
    assert "max-local-epochs is 0" in why["node-e"]
    assert "no input shape" in why["node-f"]


def test_a_node_without_a_roster_or_assuming_more_colluders_is_left_out(tmp_path: Path):
    """#14.6: a node with no [secagg] roster refuses every secure round; before, the server
    sent it every round and each one failed, now it is named before round 1."""
    ok = {"input-shape": [1, 8, 8], "labels-fit": True, "max-local-epochs": 5}
    described = {
        "node-a": ok,
        "node-b": {**ok, "max-colluding-nodes": 0},
        "node-c": {**ok, "secagg-roster": False},
        "node-d": {**ok, "max-colluding-nodes": 1},  # more than the federation's 0
    }
    secure = _federation(tmp_path, FEDERATION.replace("enabled = false", "enabled = true"))
    fit, misfits = check_cohort(secure, described)
    assert fit == ["node-a", "node-b"]
    why = {m.name: m.reason for m in misfits}
    assert why["node-c"].startswith("it has no [secagg]")
    assert why["node-d"].startswith("its secagg.max-colluding-nodes is 1, the federation's")
    plain = _federation(tmp_path)  # without secure aggregation it takes part
    assert check_cohort(plain, described)[0] == ["node-a", "node-b", "node-c", "node-d"]


def test_too_few_fitting_nodes_stop_the_run_before_any_training(tmp_path: Path):
    cfg = _federation(tmp_path)
    run = deploy_app.DeployedRun(grid=DescribeGrid({}), cfg=cfg)
    described = {
        "node-a": (1, {"input-shape": [1, 8, 8], "labels-fit": True}),
        "node-b": (2, {"input-shape": [3, 8, 8], "labels-fit": True}),
    }
    with pytest.raises(deploy_app.RunStoppedError, match=r"stopped before round 1: 1 node"):
        run.check(described)


# ---------------------------------------------------------------- progress (#15.3)


class OfflineGrid(DescribeGrid):
    """node 11 trains; the SuperLink answers for node 22 that it is unavailable."""

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        batch = list(messages)
        for m in batch:
            m.metadata.__dict__["_message_id"] = m.object_id
            if m.metadata.dst_node_id == 22:
                reply = Message(Error(code=4, reason="Error: Node Unavailable"), reply_to=m)
                reply.metadata.__dict__["_src_node_id"] = 1  # SUPERLINK_NODE_ID
                self._queue.append(reply)
        return [m.metadata.message_id for m in batch]


def test_an_offline_node_is_reported_offline_not_as_a_timeout_that_never_passed():
    grid = OfflineGrid({11: "a", 22: "b"})
    out = list(
        exchange_round(
            grid=grid,
            server_round=1,
            cohort=Participants.enrolled([("node-a", 11, {}), ("node-b", 22, {})]).cohort([0, 1]),
            content=RecordDict(),
            timeout=0.3,
        )
    )
    reasons = {r.client_id: r.reason for r in out if isinstance(r, Refusal)}
    assert reasons[1].startswith("node-b: offline (the SuperLink: Error: Node Unavailable")
    # node-a did not answer: the round waited its timeout, and says what it waited.
    assert reasons[0] == "node-a: no reply within 0s"


def _metrics(_w) -> Metrics:
    nan = float("nan")
    return Metrics(nan, nan, nan, nan, nan, None, 0)


def test_a_round_with_fewer_updates_than_min_nodes_is_not_recorded():
    weights = [np.zeros(3, dtype=np.float32)]
    recorded = []

    def cohort(r, clients, w):
        yield ClientUpdate(client_id=0, weights=[w[0] + 1], num_examples=1, train_loss=0.0)
        yield Refusal(client_id=1, reason="node-b: offline")

    with pytest.raises(RoundShortError, match="round 1 aggregated 1 update") as err:
        run_rounds(
            first_round=1,
            last_round=3,
            seed=0,
            num_clients=2,
            cohort_size=2,
            weights=weights,
            server=FedAvgM(server_lr=1.0, server_momentum=0.0),
            train_cohort=cohort,
            evaluate=_metrics,
            on_round=lambda rec, w: recorded.append(rec),
            min_updates=2,
        )
    assert recorded == [] and err.value.reasons == ["node-b: offline"]


# ---------------------------------------------------------------- truth (#17.1)


def test_the_launcher_exits_non_zero_unless_the_serverapp_says_completed(tmp_path: Path, capsys):
    cfg = _federation(tmp_path)
    files = run_files(cfg)
    # No outcome (the ServerApp died): flwr run's status 0 is not believed.
    with pytest.raises(ServerFailedError, match="ended without saying how"):
        _check_finished(cfg, flwr_run_status=0)
    files.outcome.parent.mkdir(parents=True)
    stopped = RunOutcome(
        run_id=files.run_id,
        completed=False,
        rounds_done=1,
        rounds_planned=3,
        reason="stopped: round 2 aggregated 0 update(s), fewer than the 2 needed",
    )
    write_outcome(files.outcome, stopped)
    with pytest.raises(ServerFailedError, match=r"'card': stopped: round 2 .* \(after round 1 of"):
        _check_finished(cfg, flwr_run_status=0)
    # An outcome left by another run (another config) is not this run's.
    other = dataclasses.replace(stopped, run_id="card/0", completed=True, rounds_done=3)
    write_outcome(files.outcome, other)
    with pytest.raises(ServerFailedError, match="ended without saying how"):
        _check_finished(cfg, flwr_run_status=0)
    done = dataclasses.replace(stopped, completed=True, rounds_done=3, reason="done")
    write_outcome(files.outcome, done)
    _check_finished(cfg, flwr_run_status=0)
    assert "finished 3 rounds" in capsys.readouterr().out
    assert (files.outcome.stat().st_mode & 0o777) == 0o600


def test_a_damaged_outcome_is_one_line_naming_the_file(tmp_path: Path):
    path = tmp_path / "run-outcome.json"
    path.write_text('{"run_id": "x", "completed": "yes"}')
    with pytest.raises(DataError, match=r"run-outcome.json: expected keys"):
        read_outcome(path)


def test_a_changed_config_is_a_new_run_with_its_own_folders(tmp_path: Path):
    first = run_files(_federation(tmp_path))
    again = run_files(_federation(tmp_path))
    changed = run_files(_federation(tmp_path, FEDERATION.replace("rounds = 3", "rounds = 4")))
    assert first == again
    assert changed.results != first.results and changed.checkpoint != first.checkpoint
    assert first.results.parent == changed.results.parent == tmp_path / "results"
    assert first.run_id == f"card/{_federation(tmp_path).digest()}"
    assert first.name == first.run_id.replace("/", "-")


class BrokenGrid(DescribeGrid):
    def get_node_ids(self) -> Iterable[int]:
        raise RuntimeError("the SuperLink went away")


def test_a_serverapp_that_raises_leaves_a_one_line_outcome_not_a_traceback(tmp_path: Path):
    """#17.1: the launcher used to see `flwr run` exit 0 after the ServerApp raised."""
    cfg = _federation(tmp_path)
    context = Context(
        run_id=7,
        node_id=1,
        node_config={},
        state=RecordDict(),
        run_config={CONFIG_KEY: str(cfg.source)},
    )
    deploy_app.main(BrokenGrid({}), context)  # returns: Flower prints no traceback
    outcome = read_outcome(run_files(cfg).outcome)
    assert outcome is not None and not outcome.completed and outcome.rounds_done == 0
    assert outcome.reason.startswith("RuntimeError: the SuperLink went away (traceback in")
    assert "Traceback" in (cfg.state_dir / deploy_app.ERROR_LOG).read_text()
    with pytest.raises(ServerFailedError, match="the SuperLink went away") as err:
        _check_finished(cfg, flwr_run_status=0)
    assert "\n" not in str(err.value)
