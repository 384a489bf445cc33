"""fedguard.deploy.flower: version pin, each Flower workaround taking effect, own
send_and_receive.

The patches are checked against the real Flower module they replace (undone afterwards by
the registry's ``restore_all``, the one undo list); send_and_receive runs against a fake
of Flower's transport (a Grid whose push/pull follow the SuperLink's contract); one real
TLS + auth deployment checks the round time end to end.
"""

import gc
import importlib
import inspect
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import grpc
import pytest
from flwr.app import Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import heartbeat, sql_mixin
from flwr.supercore.constant import TaskType
from flwr.supercore.exit import exit_handler
from flwr.supercore.inflatable import inflatable_utils
from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError
from flwr.supercore.superexec.executor import ExecutionSpec, LaunchResultStatus
from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor
from flwr.supercore.task_identity import TaskIdentity
from flwr.supernode.runtime import run_clientapp as run_clientapp_module

from fedguard.deploy.flower import (
    entry,
    executor_zygote,
    heartbeat_retry,
    payload_backoff,
    registry,
    sql_deferral,
    sqlite_busy_timeout,
    superexec_fork,
    supernode_poll,
    version,
    warm_clientapp,
)
from fedguard.deploy.flower.env import PATCHES_ENV
from fedguard.errors import FedguardError
from fedguard.transport import poll as grid_poll

SUPERNODE = importlib.import_module("flwr.supernode.start_client_internal")


@pytest.fixture
def restore_flower(monkeypatch):
    """Undo every patch at teardown with the registry (after the test's own monkeypatches,
    which are undone after it)."""
    yield
    registry.restore_all()


# ---------------------------------------------------------------- version pin


def test_pinned_version_is_installed_and_accepted():
    assert version.installed_flower_version() == version.FLWR_VERSION == "1.39.0"
    version.check_flower_version()


@pytest.mark.parametrize("installed", ["1.40.0", None])
def test_other_version_is_refused_before_anything_is_patched(
    monkeypatch, restore_flower, installed
):
    monkeypatch.setattr(version, "installed_flower_version", lambda: installed)
    with pytest.raises(FedguardError) as err:
        version.check_flower_version()
    assert "1.39.0" in str(err.value)
    assert (installed or "not installed") in str(err.value)
    options = {
        "fleet-message-cap": {"limit": 2**20},
        "bundle-check": {"check_bundle": lambda content, run_id: None},
    }
    for name, workaround in registry.REGISTRY.items():
        with pytest.raises(FedguardError):
            workaround.apply(**options.get(name, {}))
        with pytest.raises(FedguardError):
            workaround.check()
    assert registry.applied() == []
    assert SUPERNODE.time is time
    assert inflatable_utils.pull_objects.__kwdefaults__["initial_backoff"] == 1
    for main in (entry.supernode_main, entry.superlink_main, entry.superexec_main):
        with pytest.raises(FedguardError):
            main(["--help"])


# ---------------------------------------------------------------- SuperNode polling


def test_supernode_idle_sleep_is_capped(restore_flower):
    # The patch targets exactly these calls; if Flower changes them the patch is stale.
    source = inspect.getsource(SUPERNODE)
    assert source.count("time.sleep(3)") == 1
    assert source.count("time.sleep(0.5)") == 2

    supernode_poll.patch_supernode_polling(interval=0.05)
    t = time.monotonic()
    SUPERNODE.time.sleep(3)  # the call Flower makes when the SuperLink has nothing
    assert time.monotonic() - t < 1.0
    t = time.monotonic()
    SUPERNODE.time.sleep(0.02)  # shorter sleeps are untouched
    assert time.monotonic() - t >= 0.02
    assert SUPERNODE.time.monotonic is time.monotonic  # the rest of `time` is the real one
    assert time.sleep is not SUPERNODE.time.sleep  # nothing outside the module changes

    supernode_poll.patch_supernode_polling(interval=0.2)  # idempotent; a second call moves the cap
    assert SUPERNODE.time.cap == 0.2


def test_an_idle_supernode_polls_slower_until_a_message_comes(monkeypatch, restore_flower):
    pulled: list[int | None] = [None]

    def pull(**_: object) -> int | None:  # Flower's: the run id of a pulled message, or None
        return pulled[-1]

    monkeypatch.setattr(SUPERNODE, "_pull_and_store_message", pull)
    supernode_poll.patch_supernode_polling(interval=0.02, idle_interval=0.3, idle_after=0.2)

    def idle_poll() -> float:
        t = time.monotonic()
        SUPERNODE.time.sleep(3)  # Flower's sleep after a pull that found nothing
        return time.monotonic() - t

    assert idle_poll() < 0.15  # busy: a message may be on its way
    time.sleep(0.25)
    assert SUPERNODE._pull_and_store_message(state=None) is None  # nothing: stays idle
    assert 0.25 <= idle_poll() < 1.0
    pulled.append(42)  # a message arrives: the next polls are fast again
    assert SUPERNODE._pull_and_store_message(state=None) == 42
    assert idle_poll() < 0.15
    assert SUPERNODE._pull_and_store_message.__wrapped__ is pull


def test_supernode_polling_refuses_bad_interval_and_stale_target(monkeypatch, restore_flower):
    with pytest.raises(ValueError):
        supernode_poll.patch_supernode_polling(interval=0)
    with pytest.raises(ValueError):
        supernode_poll.patch_supernode_polling(interval=0.5, idle_interval=0.1)
    monkeypatch.setattr(SUPERNODE, "time", object())
    with pytest.raises(FedguardError, match="stale"):
        supernode_poll.patch_supernode_polling()


def test_payload_pull_backoff_starts_short(restore_flower):
    calls = []

    def pull(object_id: str) -> bytes:  # the payload arrives just after the message
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise ObjectUnavailableError(object_id)
        return b"payload"

    payload_backoff.patch_object_pull_backoff(initial=0.05)
    t = time.monotonic()
    assert inflatable_utils.pull_objects(["obj"], pull) == {"obj": b"payload"}
    assert len(calls) == 2
    assert time.monotonic() - t < 0.6  # stock: ~1 s (0.8-1.2 with jitter)


def test_a_payload_that_never_arrives_is_given_up_after_max_time(restore_flower):
    """CI, test_a_killed_node_stops_the_run_with_a_reason: a node SIGKILLed while uploading
    its reply left the ServerApp pulling the missing object for Flower's 7200 s, so the
    round never ended. With the round timeout as max_time the pull gives up, and Flower
    answers the reply with an error message: the node counts as dropped."""

    def never(object_id: str) -> bytes:
        raise ObjectUnavailableError(object_id)

    payload_backoff.patch_object_pull_backoff(initial=0.05, max_time=0.3)
    assert inflatable_utils.pull_objects.__kwdefaults__["max_time"] == 0.3
    with pytest.raises(inflatable_utils.ObjectPullError):
        inflatable_utils.pull_objects(["obj"], never)
    with pytest.raises(ValueError, match="max_time"):
        payload_backoff.patch_object_pull_backoff(max_time=0)


def test_warm_clientapp_redirects_only_flower_superexec(monkeypatch, restore_flower):
    warm_clientapp.patch_supernode_warm_clientapp()
    started = []
    monkeypatch.setattr(subprocess, "Popen", lambda args, *a, **k: started.append(args))
    SUPERNODE.subprocess.Popen(["flower-superexec", "--insecure"])
    SUPERNODE.subprocess.Popen(["other", "x"])
    assert started[0][1:] == ["-m", "fedguard.deploy.flower", "superexec", "--insecure"]
    assert started[1] == ["other", "x"]
    assert SUPERNODE.subprocess.DEVNULL == subprocess.DEVNULL


def _spec(task_type: TaskType, *, install: bool = False) -> ExecutionSpec:
    return ExecutionSpec(
        task_type=task_type, runtime_api_address="127.0.0.1:9", token="tok", insecure=True,
        root_certificates_path=None, runtime_dependency_install=install,
        parent_pid=os.getpid(), suppress_output=False, task_id=5,
    )  # fmt: skip


def test_fork_executor_runs_flowers_clientapp_runner_in_a_clean_child(monkeypatch, tmp_path):
    report = tmp_path / "child.json"

    def runner(**kwargs: object) -> None:  # stands in for Flower's runner, like a task
        report.write_text(
            json.dumps({"pid": os.getpid(), "handlers": len(exit_handler.registered_exit_handlers),
                        "token": kwargs["token"], "argv0": sys.argv[0],
                        "frozen": gc.get_freeze_count() > 0})
        )  # fmt: skip
        sys.exit(3)

    monkeypatch.setattr(run_clientapp_module, "run_clientapp", runner)
    # a handler of the parent SuperExec (closes ITS connection): must not run in the child
    monkeypatch.setattr(exit_handler, "registered_exit_handlers", [object()])
    gc.unfreeze()  # the child freezes what it inherits: its collections copy no pages
    executor = superexec_fork.make_fork_executor()
    assert executor.launch(_spec(TaskType.CLIENT_APP)).status == LaunchResultStatus.ACCEPTED
    (pid,) = executor.children
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 3  # Flower's exit code is passed on
    child = json.loads(report.read_text())
    assert child == {
        "pid": pid, "handlers": 0, "token": "tok", "argv0": "flwr-clientapp", "frozen": True
    }  # fmt: skip
    assert gc.get_freeze_count() == 0  # the parent's collector is untouched
    executor.reconcile()
    assert executor.children == set()
    assert len(exit_handler.registered_exit_handlers) == 1  # the parent's are untouched


def test_fork_executor_leaves_other_tasks_to_flower(monkeypatch):
    launched = []
    monkeypatch.setattr(SubprocessExecutor, "launch", lambda self, spec: launched.append(spec))
    executor = superexec_fork.make_fork_executor()
    executor.launch(_spec(TaskType.SERVER_APP))
    executor.launch(_spec(TaskType.CLIENT_APP, install=True))  # needs its own interpreter
    assert len(launched) == 2
    assert executor.children == set()


def test_an_idle_superexec_polls_slower_until_a_task_is_launched(monkeypatch):
    from flwr.supercore.superexec import run_superexec

    # The stretch targets the task loop's only sleep; if Flower changes it, it is stale.
    assert inspect.getsource(run_superexec).count("time.sleep(") == 1
    clock = superexec_fork.IdleStretchTime(idle_interval=0.3, idle_after=0.2)

    def poll() -> float:
        t = time.monotonic()
        clock.sleep(0.02)  # FLWR_SUPEREXEC_TASK_POLL_INTERVAL
        return time.monotonic() - t

    assert poll() < 0.15
    time.sleep(0.25)
    assert 0.25 <= poll() < 1.0
    monkeypatch.setattr(SubprocessExecutor, "launch", lambda self, spec: None)
    superexec_fork.make_fork_executor(on_launch=clock.busy).launch(_spec(TaskType.SERVER_APP))
    assert poll() < 0.15  # a task was launched: busy again


@pytest.fixture
def unfreeze():
    """The zygote freezes the garbage collector's view of this (test) process: undo it."""
    yield
    gc.unfreeze()


def _wait_exit(zygote: object, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while (code := zygote.poll()) is None:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the executor zygote did not end"
        time.sleep(0.05)
    return code


def test_the_supernode_hands_flowers_superexec_arguments_to_its_forked_executor(
    monkeypatch, restore_flower, unfreeze, tmp_path
):
    report = tmp_path / "superexec.json"

    def superexec(argv: list[str]) -> None:  # stands in for fedguard's SuperExec
        comm = Path("/proc/self/comm").read_text().strip()
        report.write_text(json.dumps({"pid": os.getpid(), "argv": argv, "comm": comm,
                                      "frozen": gc.get_freeze_count() > 0}))  # fmt: skip
        sys.exit(4)

    warm_clientapp.patch_supernode_warm_clientapp()
    # before Flower starts: forked, then it waits
    zygote = executor_zygote.ExecutorZygote.fork(run=superexec)
    assert zygote.poll() is None and not report.exists()
    monkeypatch.setattr(warm_clientapp.SuperExecRedirect, "zygote", zygote)
    started = []
    monkeypatch.setattr(subprocess, "Popen", lambda args, *a, **k: started.append(args))
    assert SUPERNODE.subprocess.Popen(["flower-superexec", "--insecure"]) is zygote
    assert _wait_exit(zygote) == 4  # its exit status, as a started SuperExec's
    child = json.loads(report.read_text())
    assert child == {"pid": zygote.pid, "argv": ["--insecure"], "comm": "fg-superexec",
                     "frozen": True}  # fmt: skip
    assert started == []
    # Used once: a second SuperExec (never asked for by Flower 1.39) is a new interpreter.
    SUPERNODE.subprocess.Popen(["flower-superexec", "--insecure"])
    assert started[0][1:] == ["-m", "fedguard.deploy.flower", "superexec", "--insecure"]


def test_an_executor_zygote_never_started_ends_with_its_supernode(unfreeze, tmp_path):
    zygote = executor_zygote.ExecutorZygote.fork(run=lambda argv: (tmp_path / "ran").touch())
    os.close(zygote._fd)  # what the SuperNode's exit does to the pipe
    zygote._fd = -1
    assert _wait_exit(zygote) == 0
    assert not (tmp_path / "ran").exists()
    assert zygote.launch(["--insecure"]) is False  # the redirect then starts an interpreter


def test_preload_supernode_imports_the_executor_only_when_it_is_warm(monkeypatch):
    calls = []
    monkeypatch.setattr(entry, "preload_executor", lambda: calls.append("executor"))
    monkeypatch.setattr(entry, "apply_all", lambda names: calls.append(",".join(names)))
    monkeypatch.setenv(PATCHES_ENV, "poll,heartbeat")
    entry.preload_supernode()
    assert calls == []
    monkeypatch.delenv(PATCHES_ENV)
    entry.preload_supernode()
    assert calls == ["defer-sql", "executor"]
    assert "flwr.supernode.main" in sys.modules  # what the SuperNode imports once running


_NO_SQL_CHECK = """
import json, sys
from fedguard.deploy.flower import sql_deferral, superexec_fork
sql_deferral.defer_sql_stores()
superexec_fork.preload_executor()  # the SuperExec's and ClientApp's Flower modules
import flwr.supernode.cli, flwr.supernode.main, flwr.supernode.start_client_internal
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.object_store.sql_object_store import SqlObjectStore
from flwr.server.superlink.linkstate import SqlLinkState
out = {"imported": sorted(m for m in ("sqlalchemy", "alembic") if m in sys.modules)}
out["node store"] = type(ObjectStoreFactory().store()).__name__
out["still none"] = "sqlalchemy" in sys.modules
store = ObjectStoreFactory(":memory:").store()  # what a SuperLink builds: the real one
out["sql store"] = [type(store).__module__, type(store).__name__]
out["isinstance"] = isinstance(store, SqlObjectStore)
out["sql imported"] = "sqlalchemy" in sys.modules
stand_in = sys.modules["flwr.server.superlink.linkstate.sql_linkstate"]
out["linkstate"] = issubclass(stand_in.load().SqlLinkState, SqlLinkState)
print(json.dumps(out))
"""


def test_a_node_imports_no_sql_until_a_sql_store_is_built():
    # A fresh interpreter: the stand-ins replace modules for the whole process.
    run = subprocess.run(
        [sys.executable, "-c", _NO_SQL_CHECK], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.splitlines()[-1]) == {
        "imported": [],  # SQLAlchemy and Alembic: ~28 MB a node does not hold
        "node store": "InMemoryObjectStore",
        "still none": False,
        "sql store": ["flwr.supercore.object_store.sql_object_store", "SqlObjectStore"],
        "isinstance": True,
        "sql imported": True,
        "linkstate": True,
    }
    assert "flwr.supercore.object_store.sql_object_store" in sql_deferral.SQL_STORES


def test_sql_stand_ins_are_not_installed_over_real_modules(restore_flower):
    real = importlib.import_module("flwr.supercore.object_store.sql_object_store")
    sql_deferral.defer_sql_stores()
    assert sys.modules[real.__name__] is real


def test_superlink_sqlite_waits_longer_for_a_lock(restore_flower):
    sqlite_busy_timeout.patch_sqlite_busy_timeout(milliseconds=30_000)
    conn = sqlite3.connect(":memory:")
    sql_mixin._set_sqlite_pragmas(conn, None)  # what Flower runs on every new connection
    assert conn.execute("PRAGMA busy_timeout").fetchone() == (30_000,)
    conn.close()
    assert dict(sql_mixin.SQLITE_PRAGMAS)["journal_mode"] == "WAL"  # the others unchanged


class _RpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code


@pytest.mark.parametrize(
    ("code", "survives"),
    [
        (grpc.StatusCode.INTERNAL, True),
        pytest.param(  # the error ends Flower's heartbeat thread, as it should
            grpc.StatusCode.UNAUTHENTICATED,
            False,
            marks=pytest.mark.filterwarnings(
                "ignore::pytest.PytestUnhandledThreadExceptionWarning"
            ),
        ),
    ],
)
def test_a_heartbeat_survives_a_server_error_but_not_a_refusal(
    restore_flower, code: grpc.StatusCode, survives: bool
):
    heartbeat_retry.patch_heartbeat_retry()
    heartbeat_retry.patch_heartbeat_retry()  # idempotent: wrapped once
    calls: list[float] = []

    def beat() -> bool:  # Flower's node heartbeat: the first call meets a server error
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise _RpcError(code)
        return True

    sender = heartbeat.HeartbeatSender(beat)
    sender.start()
    deadline = time.monotonic() + 10
    while len(calls) < 2 and time.monotonic() < deadline and sender._thread.is_alive():
        time.sleep(0.05)
    alive = sender._thread.is_alive()
    if alive:
        sender.stop()
    assert (len(calls) >= 2 and alive) == survives


def test_supernode_patch_selection_is_validated(monkeypatch, restore_flower):
    monkeypatch.setenv(PATCHES_ENV, "poll,turbo")
    with pytest.raises(FedguardError, match="turbo"):
        entry.supernode_main(["--help"])


# ---------------------------------------------------------------- send_and_receive


class FakeGrid(Grid):
    """Flower's transport as the ServerApp sees it: a reply to the message for node N can
    be pulled ``delays[N]`` s after the push (never if None), once."""

    def __init__(self, delays: dict[int, float | None]) -> None:
        self.delays = delays
        self.pushed: dict[str, tuple[Message, float]] = {}
        self.delivered: set[str] = set()
        self.pulls: list[float] = []

    def set_run(self, run):
        raise NotImplementedError

    @property
    def run(self):
        raise NotImplementedError

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content, dst_node_id=dst_node_id, message_type=message_type,
                       group_id=group_id)  # fmt: skip

    def get_node_ids(self) -> Iterable[int]:
        return list(self.delays)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = msg.object_id  # as HttpGrid does
            self.pushed[msg.object_id] = (msg, time.monotonic())
            ids.append(msg.object_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        now = time.monotonic()
        self.pulls.append(now)
        out = []
        for mid in list(message_ids):
            msg, pushed_at = self.pushed[mid]
            delay = self.delays[msg.metadata.dst_node_id]
            if mid not in self.delivered and delay is not None and now >= pushed_at + delay:
                self.delivered.add(mid)
                node = float(msg.metadata.dst_node_id)
                out.append(Message(RecordDict({"m": MetricRecord({"node": node})}), reply_to=msg))
        return out

    def send_and_receive(self, messages, *, timeout=None):
        raise AssertionError("fedguard must not call Flower's send_and_receive")


@pytest.fixture
def identity(monkeypatch):
    monkeypatch.setattr(TaskIdentity, "_run_id", 7)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 3)


def _messages(grid: FakeGrid) -> list[Message]:
    return [
        grid.create_message(RecordDict({"m": MetricRecord({"x": 1.0})}), "train", n, "1")
        for n in grid.get_node_ids()
    ]


def test_send_and_receive_returns_every_reply_soon_after_the_last(identity):
    grid = FakeGrid({11: 0.0, 12: 0.15, 13: 0.3})
    t = time.monotonic()
    replies = grid_poll.send_and_receive(grid, _messages(grid), timeout=30)
    elapsed = time.monotonic() - t
    assert sorted(r.content["m"]["node"] for r in replies) == [11.0, 12.0, 13.0]
    assert {r.metadata.reply_to_message_id for r in replies} == set(grid.pushed)
    assert 0.3 <= elapsed < 1.5  # Flower's own would take >= 3 s
    # not a busy loop: about one pull per poll interval (0.05 s), never hundreds
    assert len(grid.pulls) <= elapsed / 0.05 + 2
    gaps = [b - a for a, b in zip(grid.pulls, grid.pulls[1:], strict=False)]
    assert min(gaps) >= 0.04


def test_send_and_receive_stops_at_timeout_with_what_arrived(identity):
    grid = FakeGrid({21: 0.0, 22: None})
    t = time.monotonic()
    replies = grid_poll.send_and_receive(grid, _messages(grid), timeout=0.5, poll_interval=0.1)
    elapsed = time.monotonic() - t
    assert [r.content["m"]["node"] for r in replies] == [21.0]
    assert 0.5 <= elapsed < 1.5
    assert 4 <= len(grid.pulls) <= 8


def test_send_and_receive_with_no_messages_and_bad_arguments(identity):
    grid = FakeGrid({})
    assert grid_poll.send_and_receive(grid, [], timeout=5) == []
    assert grid.pulls == []
    with pytest.raises(ValueError):
        grid_poll.send_and_receive(grid, [], timeout=-1)
    with pytest.raises(ValueError):
        grid_poll.send_and_receive(grid, [], timeout=1, poll_interval=0)


def test_send_and_receive_zero_timeout_pulls_once(identity):
    grid = FakeGrid({31: None})
    assert grid_poll.send_and_receive(grid, _messages(grid), timeout=0) == []
    assert len(grid.pulls) == 1


def test_a_run_record_naming_another_app_folder_is_refused():
    """The ClientApp process loads the pyproject of the folder the run record names
    (fab_id, fab_version), not the checked bundle's: a record that does not name the
    bundle it carries (another app, a version with ../) is refused before anything is
    imported (red team)."""
    import io
    import zipfile
    from types import SimpleNamespace

    from fedguard.deploy.flower.bundle_check import _run_record_refusal

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(
            "pyproject.toml",
            '[project]\nname = "fedguard-federation"\nversion = "1.0.0"\n'
            '[tool.flwr.app]\npublisher = "fedguard"\n',
        )
    content = buf.getvalue()
    ok = SimpleNamespace(fab_id="fedguard/fedguard-federation", fab_version="1.0.0")
    assert _run_record_refusal(ok, 3, content) is None
    for fab_id, fab_version in (
        ("fedguard/fedguard-federation", "1.0.0/../../other"),
        ("other/app", "1.0.0"),
        ("", ""),
    ):
        bad = SimpleNamespace(fab_id=fab_id, fab_version=fab_version)
        refusal = _run_record_refusal(bad, 3, content)
        assert refusal is not None and "refused before anything of it was imported" in refusal
    assert _run_record_refusal(None, 3, content) is not None  # no record seen: refused
    assert _run_record_refusal(ok, 3, b"not a zip") is not None
