"""The registry of Flower workarounds: each applies, is undone exactly, and notices when
its target has changed shape; the invariants a fork relies on are checked, not assumed.

Against the real Flower 1.39 modules. The undo list is the registry's own: a workaround
added without a way back leaves a target changed and fails here.
"""

import importlib
import sys
import threading

import pytest
from flwr.supercore import heartbeat, sql_mixin
from flwr.supercore.constant import TaskType
from flwr.supercore.inflatable import inflatable_utils
from flwr.supercore.superexec import run_superexec
from flwr.supercore.superexec.executor import ExecutionSpec

from fedguard.deploy.flower import registry, sql_deferral
from fedguard.deploy.flower.executor_zygote import ExecutorZygote
from fedguard.deploy.flower.superexec_fork import CLIENTAPP_MODULES, make_fork_executor
from fedguard.errors import ConfigError, FedguardError

SUPERNODE = importlib.import_module("flwr.supernode.start_client_internal")
CONNECTION = importlib.import_module("flwr.client.grpc_rere_client.connection")
SUPERLINK_CLI = importlib.import_module("flwr.superlink.cli.flower_superlink")
OPTIONS = {
    "fleet-message-cap": {"limit": 2**20},
    "bundle-check": {"check_bundle": lambda content, run_id: None},
}


def _targets() -> dict[str, object]:
    """Every Flower name some workaround replaces, as it is now."""
    pullers = (inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree)
    return {
        "supernode time": SUPERNODE.time,
        "supernode subprocess": SUPERNODE.subprocess,
        "supernode pull": SUPERNODE._pull_and_store_message,
        "backoff": tuple(fn.__kwdefaults__["initial_backoff"] for fn in pullers),
        "superexec get_executor": run_superexec.get_executor,
        "superexec time": run_superexec.time,
        "sqlite pragmas": sql_mixin.SQLITE_PRAGMAS,
        "heartbeat": heartbeat.HeartbeatSender._heartbeat,
        "heartbeat intervals": (
            heartbeat.HEARTBEAT_DEFAULT_INTERVAL,
            CONNECTION.HEARTBEAT_DEFAULT_INTERVAL,
        ),
        "sql stores": tuple(sys.modules.get(name) for name in sql_deferral.SQL_STORES),
        "fleet cap": SUPERLINK_CLI.GRPC_MAX_MESSAGE_LENGTH,
        "superexec command": SUPERLINK_CLI._get_superexec_command,
    }


@pytest.fixture
def no_sql_modules(monkeypatch):
    """The SQL store modules as a node has them: not imported (monkeypatch puts them back)."""
    for name in sql_deferral.SQL_STORES:
        monkeypatch.delitem(sys.modules, name, raising=False)


def test_every_workaround_is_undone_exactly(no_sql_modules):
    before = _targets()
    try:
        registry.apply_all(list(registry.REGISTRY), options=OPTIONS)
        registry.apply_all(list(registry.REGISTRY), options=OPTIONS)  # idempotent
        assert registry.applied() == list(registry.REGISTRY)
        after = _targets()
        unchanged = [k for k in before if after[k] is before[k] or after[k] == before[k]]
        assert unchanged == []  # every target is some workaround's
    finally:
        undone = registry.restore_all()
    assert sorted(undone) == sorted(registry.REGISTRY)
    now = _targets()
    assert [k for k in before if not (now[k] is before[k] or now[k] == before[k])] == []
    assert registry.applied() == []


def test_two_wrappers_of_one_function_unwind_in_order():
    stock = SUPERNODE._pull_and_store_message
    try:
        bundle = {"bundle-check": OPTIONS["bundle-check"]}
        registry.apply_all(["bundle-check", "supernode-poll"], options=bundle)
        wrapped = SUPERNODE._pull_and_store_message
        with pytest.raises(FedguardError, match=r"restore bundle-check: .* supernode-poll"):
            registry.REGISTRY["bundle-check"].restore()  # out of order: refused, whole
        assert SUPERNODE._pull_and_store_message is wrapped
    finally:
        registry.restore_all()
    assert SUPERNODE._pull_and_store_message is stock


def test_names_and_options_are_checked_before_anything_is_applied():
    with pytest.raises(ConfigError, match=r"workaround: expected one of .* got 'turbo'"):
        registry.apply_all(["supernode-poll", "turbo"])
    with pytest.raises(ConfigError, match="options"):
        registry.apply_all(["supernode-poll"], options=OPTIONS)
    assert registry.applied() == []


def _delete(owner: object, name: str):
    return lambda mp: mp.delattr(owner, name)


def _set(owner: object, name: str, value: object):
    return lambda mp: mp.setattr(owner, name, value)


# How each workaround's target could change shape in a new Flower (one per workaround: a
# workaround added to the registry needs its case here).
STALE = {
    "supernode-poll": _set(SUPERNODE, "time", object()),
    "payload-backoff": _set(inflatable_utils.pull_objects, "__kwdefaults__", {}),
    "warm-clientapp": _set(SUPERNODE, "subprocess", object()),
    "superexec-fork": _set(run_superexec, "time", object()),
    "sqlite-busy-timeout": _set(sql_mixin, "SQLITE_PRAGMAS", (("journal_mode", "WAL"),)),
    "heartbeat-retry": _delete(heartbeat, "HeartbeatFailure"),
    "defer-sql": lambda mp: mp.setitem(sql_deferral.SQL_STORES, "flwr.sql_store_gone", "X"),
    "fleet-message-cap": _set(SUPERLINK_CLI, "GRPC_MAX_MESSAGE_LENGTH", None),
    "heartbeat-interval": _set(CONNECTION, "HEARTBEAT_DEFAULT_INTERVAL", "30"),
    "bundle-check": _delete(SUPERNODE, "_insert_message"),
    "plain-superexec": _delete(SUPERLINK_CLI, "_get_superexec_command"),
}


def test_every_workaround_has_a_stale_case():
    assert sorted(STALE) == sorted(registry.REGISTRY)


@pytest.mark.parametrize("name", sorted(STALE))
def test_a_changed_target_is_named_and_left_alone(monkeypatch, name):
    workaround = registry.REGISTRY[name]
    workaround.check()  # the pinned Flower fits
    STALE[name](monkeypatch)
    with pytest.raises(FedguardError) as err:
        workaround.check()
    assert "\n" not in str(err.value)
    with pytest.raises(FedguardError):
        workaround.apply(**OPTIONS.get(name, {}))
    assert registry.applied() == []


def test_the_executor_is_not_forked_beside_another_thread():
    # A fork copies only the calling thread: a lock another holds stays locked for ever.
    release = threading.Event()
    other = threading.Thread(target=release.wait, name="grpc-like", daemon=True)
    other.start()
    try:
        with pytest.raises(FedguardError, match="1 more running: grpc-like"):
            ExecutorZygote.fork(run=lambda argv: None)
    finally:
        release.set()
        other.join()


def test_a_clientapp_is_not_forked_before_its_modules_are_imported(monkeypatch):
    monkeypatch.delitem(sys.modules, CLIENTAPP_MODULES[0])
    spec = ExecutionSpec(
        task_type=TaskType.CLIENT_APP, runtime_api_address="127.0.0.1:9", token="t",
        insecure=True, root_certificates_path=None, runtime_dependency_install=False,
        parent_pid=0, suppress_output=False, task_id=1,
    )  # fmt: skip
    executor = make_fork_executor()
    with pytest.raises(FedguardError, match=f"got {CLIENTAPP_MODULES[0]} not imported"):
        executor.launch(spec)
    assert executor.children == set()
