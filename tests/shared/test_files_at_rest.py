"""Files at rest: private modes, crash-safe writes, and no unpickling anywhere.

- Keys from ``fedguard certs`` are 0600 in 0700 folders; a node's state folder is 0700
  and everything a round leaves in it (ledger, accountant, run plans, last reply) is
  owner-only; a checkpoint is 0600. Checked under umask 000, so the modes are the code's
  doing, not the umask's.
- Checkpoint and ledger writes go temp file -> fsync -> rename -> fsync(folder). A write
  that fails midway (a real one: the file-size limit ``RLIMIT_FSIZE`` cuts the temp file
  short) or at the rename leaves the previous file intact, no temp file behind, and
  raises an ``OSError`` naming the file.
- No source file of fedguard can unpickle: no pickle/dill/joblib/shelve/marshal import,
  no ``torch.load``, no ``np.load`` without ``allow_pickle=False``, no
  ``allow_pickle=True``, no ``read_pickle`` (generated protobuf code excluded).
"""

from __future__ import annotations

import ast
import contextlib
import errno
import os
import resource
import signal
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from harness.federation_files import write_federation

from fedguard.cli import main as fedguard_main
from fedguard.client.node import node_runtime
from fedguard.files import LEDGER_FILE
from fedguard.fl.loop import TrainRequest
from fedguard.privacy.ledger import Ledger
from fedguard.server.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fedguard.task import build_model, get_weights

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("fedguard", "privacy", "client", "server", "simulations")
GENERATED = REPO / "fedguard" / "proto"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@contextlib.contextmanager
def umask(value: int) -> Iterator[None]:
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


# ---------------------------------------------------------------- modes


def test_certs_write_private_keys_into_private_folders(tmp_path: Path):
    with umask(0o000), contextlib.chdir(tmp_path):
        fedguard_main(["certs", "init", "--out", "operator/certs"])
        fedguard_main(["certs", "node", "hospital-a", "--out", "hospital/keys"])
    certs, keys = tmp_path / "operator/certs", tmp_path / "hospital/keys"
    assert mode(certs) == 0o700 and mode(keys) == 0o700
    assert {p.name: mode(p) for p in certs.iterdir()} == {
        "ca.key": 0o600,
        "server.key": 0o600,
        "ca.crt": 0o644,  # certificates are public
        "server.pem": 0o644,
    }
    assert {p.name: mode(p) for p in keys.iterdir()} == {
        "hospital-a": 0o600,
        "hospital-a.pub": 0o644,
    }


def test_a_nodes_state_after_a_round_is_owner_only(tmp_path: Path):
    with umask(0o000):
        layout = write_federation(out=tmp_path / "demo", nodes=2, rounds=3)
        node_runtime.cache_clear()
        runtime = node_runtime(str(layout.nodes[0]))
        weights = get_weights(build_model(name="logreg", input_shape=(1, 8, 8), num_classes=10))
        request = TrainRequest(
            server_round=1, local_epochs=1, batch_size=64, lr=0.5, max_grad_norm=0.5,
            total_rounds=3, federation="demo", model="logreg", run_id="demo/abc",
        )  # fmt: skip
        runtime.train(model_name="logreg", weights=weights, request=request)
    state = runtime.state_dir
    found = {p.name: mode(p) for p in state.rglob("*")}
    assert {LEDGER_FILE, "run-plans.json", "last-reply.safetensors"} <= found.keys()
    assert any(name.startswith("accountant-") for name in found)
    assert mode(state) == 0o700
    assert {n: m for n, m in found.items() if m & 0o077} == {}  # nothing readable by others


def test_a_checkpoint_is_0600_in_folders_it_creates_0700(tmp_path: Path):
    path = tmp_path / "server" / "state" / "checkpoint.safetensors"
    with umask(0o000):
        save_checkpoint(path, _checkpoint(1))
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700 and mode(path.parent.parent) == 0o700


# ---------------------------------------------------------------- crash-safe writes


def _checkpoint(server_round: int, size: int = 4) -> Checkpoint:
    rng = np.random.default_rng(server_round)
    weights = [rng.normal(size=(size, size)).astype(np.float32)]
    return Checkpoint(server_round=server_round, config_digest="abc", weights=weights, velocity=[])


def _ledger_round(ledger: Ledger, server_round: int) -> None:
    entry = ledger.begin(
        run="fed-a",
        server_round=server_round,
        dataset_fingerprint="sha256:" + "ab" * 32,
        sample_rate=0.05,
        noise_multiplier=1.1,
        steps=40,
        max_grad_norm=1.0,
        epsilon_after=0.3 * server_round,
        delta=1e-5,
        accountant="rdp",
    )
    ledger.commit(entry)


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Writes past ``limit`` bytes fail with EFBIG (as on a full disk, midway)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills us
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def _fail_rename(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", fail)


Writer = Callable[[Path], None]


def _write_checkpoint(path: Path) -> None:
    save_checkpoint(path, _checkpoint(2, size=200))  # ~160 kB, far past the limit


def _append_ledger(path: Path) -> None:
    _ledger_round(Ledger(path=path), 2)


@pytest.mark.parametrize("failure", ["cut-short-midway", "rename-fails"])
@pytest.mark.parametrize(
    ("name", "first", "second", "read"),
    [
        (
            "checkpoint.safetensors",
            lambda p: save_checkpoint(p, _checkpoint(1)),
            _write_checkpoint,
            lambda p: load_checkpoint(p).server_round,  # type: ignore[union-attr]
        ),
        (
            LEDGER_FILE,
            lambda p: _ledger_round(Ledger(path=p), 1),
            _append_ledger,
            lambda p: [e.server_round for e in Ledger(path=p).entries()],
        ),
    ],
    ids=["checkpoint", "ledger"],
)
def test_a_failed_write_keeps_the_previous_file_and_says_so(
    tmp_path: Path, monkeypatch, failure: str, name: str, first: Writer, second: Writer, read
):
    path = tmp_path / "state" / name
    first(path)
    before, readable = path.read_bytes(), read(path)
    with contextlib.ExitStack() as stack:
        if failure == "cut-short-midway":
            stack.enter_context(file_size_limit(len(before) + 64))
        else:
            _fail_rename(monkeypatch)
        with pytest.raises(OSError) as err:
            second(path)
    monkeypatch.undo()
    want = errno.EFBIG if failure == "cut-short-midway" else errno.ENOSPC
    assert err.value.errno == want
    assert str(path) in str(err.value) and "previous file (if any) is unchanged" in str(err.value)
    assert path.read_bytes() == before and read(path) == readable
    assert [p.name for p in path.parent.iterdir()] == [name]  # no temp file left behind
    if name == LEDGER_FILE:
        assert Ledger(path=path).verify().ok


def test_checkpoint_and_ledger_go_temp_file_fsync_rename_fsync_folder(tmp_path: Path, monkeypatch):
    calls: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append(("fsync", "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"))
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        src, dst = Path(src), Path(dst)
        assert src.parent == dst.parent and src.name.startswith(f".{dst.name}.")
        calls.append(("rename", dst.name))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)  # spies: the real calls still happen
    monkeypatch.setattr(os, "replace", replace)
    save_checkpoint(tmp_path / "checkpoint.safetensors", _checkpoint(1))
    ledger = Ledger(path=tmp_path / LEDGER_FILE)
    _ledger_round(ledger, 1)
    per_write = [("fsync", "file"), ("rename", "{}"), ("fsync", "folder")]
    names = ["checkpoint.safetensors", LEDGER_FILE, LEDGER_FILE]  # begin + commit
    assert calls == [(k, v.format(n)) for n in names for k, v in per_write]


# ---------------------------------------------------------------- no unpickling

_BANNED_MODULES = {
    "pickle",
    "cPickle",
    "_pickle",
    "dill",
    "joblib",
    "cloudpickle",
    "shelve",
    "marshal",
}


def _false(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is False


def unpickling(source: str) -> list[str]:
    """Every place in ``source`` that could unpickle, as 'line N: what', sorted."""
    found = []
    for node in ast.walk(ast.parse(source)):
        where = f"line {getattr(node, 'lineno', 0):04d}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in _BANNED_MODULES:
                    found.append(f"{where}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            if (node.module or "").split(".")[0] in _BANNED_MODULES:
                found.append(f"{where}: from {node.module} import")
        elif isinstance(node, ast.keyword) and node.arg == "allow_pickle":
            if not _false(node.value):
                found.append(f"{where}: allow_pickle={ast.unparse(node.value)}")
        elif isinstance(node, ast.Attribute) and node.attr in ("read_pickle", "to_pickle"):
            found.append(f"{where}: {ast.unparse(node)}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = ast.unparse(node.func.value)
            if (owner, node.func.attr) == ("torch", "load"):
                found.append(f"{where}: torch.load")
            safe = any(k.arg == "allow_pickle" and _false(k.value) for k in node.keywords)
            if owner in ("np", "numpy") and node.func.attr == "load" and not safe:
                found.append(f"{where}: {owner}.load without allow_pickle=False")
    return sorted(found)


def _sources() -> list[Path]:
    files = [p for d in SOURCES for p in sorted((REPO / d).rglob("*.py"))]
    return [p for p in files if GENERATED not in p.parents]


def test_no_source_file_can_unpickle():
    files = _sources()
    assert len(files) > 50 and REPO / "server" / "checkpoint.py" in files
    found = {str(p.relative_to(REPO)): hits for p in files if (hits := unpickling(p.read_text()))}
    assert found == {}


def test_the_scan_finds_each_way_to_unpickle():
    bad = """
import pickle
import dill.settings
from joblib import load
import numpy as np
np.load(f)
np.load(f, allow_pickle=True)
numpy.load(f, allow_pickle=flag)
torch.load(f, weights_only=True)
df = pd.read_pickle(f)
np.load(f, allow_pickle=False)
"""
    assert [hit.split(": ", 1)[1] for hit in unpickling(bad)] == [
        "import pickle",
        "import dill.settings",
        "from joblib import",
        "np.load without allow_pickle=False",
        "allow_pickle=True",
        "np.load without allow_pickle=False",
        "allow_pickle=flag",
        "numpy.load without allow_pickle=False",
        "torch.load",
        "pd.read_pickle",
    ]


def test_a_state_folder_made_beforehand_is_made_private(tmp_path: Path):
    """#15 point 7: an operator's `mkdir state` (0755) stayed 0755, and Flower's
    superlink.db / logs were 0644: readable by every local user."""
    from fedguard._io import private_folder

    state = tmp_path / "server-state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    (state / "superlink.db").write_bytes(b"x")
    (state / "superlink.db").chmod(0o644)
    (state / "flwr").mkdir()
    (state / "flwr").chmod(0o755)
    private_folder(state, key="federation.toml: state-dir")
    assert mode(state) == 0o700
    assert mode(state / "superlink.db") == 0o600
    assert mode(state / "flwr") == 0o700


def test_a_state_dir_that_is_a_file_is_one_line(tmp_path: Path):
    from fedguard._io import private_folder
    from fedguard.errors import ConfigError

    path = tmp_path / "state"
    path.write_text("")
    with pytest.raises(ConfigError, match=r"state-dir = .*: expected a folder, found a file$"):
        private_folder(path, key="node.toml: node.state-dir")
