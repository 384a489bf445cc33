"""Fuzzing every file fedguard reads back: configs, ledgers, accountant state, checkpoints.

Random and mutated contents (hypothesis; bounded and derandomised, so a run is repeatable)
go through the real loaders. Each may only accept the file or raise its documented error:
``ConfigError`` for the TOML configs and the accountant state, ``LedgerError`` from
``Ledger.entries``/``spent`` (``Ledger.verify`` names problems in its report instead), and
``DataError`` from ``load_checkpoint``. Any other exception fails the test; so does a call
still running after a few seconds (a hang), through ``SIGALRM``.

The cases written out by hand at the end of each section are what fuzzing (or reading
the loader after it) found; each was a crash with another exception before its fix.
(Over the 400-line guide: the four loaders share the hang guard and the mutations.)
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomli_w
from fuzzing import FUZZ, mutated, no_hang, only
from harness.federation_files import write_federation
from hypothesis import given
from hypothesis import strategies as st

from fedguard.config import SimulationConfig, load_simulation_config, option_name
from fedguard.deploy_config import load_federation_config, load_node_config
from fedguard.errors import ConfigError, DataError
from fedguard.federation_config import (
    ClientDPSection,
    FederationSection,
    SecAggSection,
    ServerNetwork,
    TaskSection,
    TrainingSection,
)
from fedguard.node_config import (
    DataSection,
    NodeSecAggSection,
    NodeSection,
    PolicySection,
)
from fedguard.privacy import Accountant, AccountantStore, GaussianEvent
from fedguard.privacy.ledger import Ledger, LedgerError, VerifyReport
from fedguard.server.checkpoint import Checkpoint, load_checkpoint, save_checkpoint

# ---------------------------------------------------------------- TOML configs

NASTY_STRINGS = ["~nosuchuser-fedguard/x", "a" * 5000, "\x00", "", "../..", "127.0.0.1:9092"]
scalars = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**1100), max_value=2**1100),  # past 64 bits and a float's range
    st.floats(),  # NaN and infinities included
    st.booleans(),
    st.text(max_size=12),
    st.sampled_from(NASTY_STRINGS),
    st.dates(),
)
toml_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def keys_of(cls: type) -> list[str]:
    return [f.name.replace("_", "-") for f in dataclasses.fields(cls)]


FEDERATION_SCHEMA = {
    "federation": keys_of(FederationSection),
    "task": keys_of(TaskSection),
    "training": keys_of(TrainingSection),
    "server": keys_of(ServerNetwork),
    "secagg": keys_of(SecAggSection),
    "client-dp": keys_of(ClientDPSection),
}
NODE_SCHEMA = {
    "node": keys_of(NodeSection),
    "data": keys_of(DataSection),
    "privacy": keys_of(PolicySection),
    "secagg": keys_of(NodeSecAggSection),
}
SIMULATION_KEYS = [option_name(f.name) for f in dataclasses.fields(SimulationConfig)]


def overlay(schema: dict[str, list[str]], top: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Changes to a config document: real sections and keys (and others) set to any value."""
    key = st.sampled_from(top + sorted(schema)) | st.text(max_size=6)
    if not schema:  # a flat document (the simulation config)
        return st.dictionaries(key, toml_values, max_size=4)
    section = st.sampled_from(sorted(schema)).flatmap(
        lambda name: st.tuples(
            st.just(name),
            st.dictionaries(
                st.sampled_from(schema[name]) | st.text(max_size=6), toml_values, max_size=3
            ),
        )
    )
    return st.builds(
        lambda sections, loose: {**dict(sections), **loose},
        st.lists(section, max_size=3),
        st.dictionaries(key, toml_values, max_size=2),
    )


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in changes.items():
        both = isinstance(out.get(k), dict) and isinstance(v, dict)
        out[k] = {**out[k], **v} if both else v
    return out


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    layout = write_federation(out=tmp_path_factory.mktemp("fuzz") / "demo", nodes=2, rounds=2)
    return {"federation": layout.federation, "node": layout.nodes[0]}


LOADERS: dict[str, Callable[[Path], object]] = {
    "simulation": lambda p: load_simulation_config(path=p),
    "federation": load_federation_config,
    "node": load_node_config,
}


def _base(kind: str, demo: dict[str, Path]) -> dict[str, Any]:
    if kind == "simulation":
        return {"clients": 4, "rounds": 2, "dataset": "digits", "epsilon": 2.0}
    return tomllib.loads(demo[kind].read_text())


def _load(kind: str, path: Path) -> None:
    only(ConfigError, lambda: LOADERS[kind](path))


@pytest.mark.parametrize("kind", ["simulation", "federation", "node"])
def test_the_real_configs_load(kind: str, demo, tmp_path: Path):
    path = tmp_path / "c.toml"
    path.write_text(tomli_w.dumps(_base(kind, demo)))
    LOADERS[kind](path)  # the baseline the mutations start from is valid


@FUZZ
@given(changes=overlay({}, SIMULATION_KEYS))
def test_simulation_config_documents(changes, tmp_path: Path):
    path = tmp_path / "sim.toml"
    path.write_text(tomli_w.dumps(merged(_base("simulation", {}), changes)))
    _load("simulation", path)


@FUZZ
@given(changes=overlay(FEDERATION_SCHEMA, ["state-dir", "out"]))
def test_federation_config_documents(changes, demo, tmp_path: Path):
    path = demo["federation"].parent / "fuzzed-federation.toml"
    path.write_text(tomli_w.dumps(merged(_base("federation", demo), changes)))
    _load("federation", path)


@FUZZ
@given(changes=overlay(NODE_SCHEMA, []))
def test_node_config_documents(changes, demo, tmp_path: Path):
    path = demo["node"].parent / "fuzzed-node.toml"
    path.write_text(tomli_w.dumps(merged(_base("node", demo), changes)))
    _load("node", path)


@FUZZ
@given(kind=st.sampled_from(sorted(LOADERS)), text=st.text(max_size=200))
def test_random_text(kind: str, text: str, tmp_path: Path):
    path = tmp_path / "c.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    _load(kind, path)


@FUZZ
@given(kind=st.sampled_from(sorted(LOADERS)), data=st.data())
def test_mutated_real_configs(kind: str, data: st.DataObject, demo, tmp_path: Path):
    original = tomli_w.dumps(_base(kind, demo)).encode()
    path = demo.get(kind, tmp_path / "x").parent / f"mutated-{kind}.toml"
    path.write_bytes(data.draw(mutated(original)))
    _load(kind, path)


NASTY_TOML = {
    "5000-digit integer": "seed = " + "1" * 5000,
    "huge hex integer": "seed = 0x" + "f" * 5000,
    "integer past 64 bits": "seed = 99999999999999999999",
    "float overflow from an integer": "lr = 1" + "0" * 400,
    "deeply nested arrays": "seed = " + "[" * 5000 + "]" * 5000,
    "deeply nested inline tables": "seed = " + "{a = " * 3000 + "1" + "}" * 3000,
    "infinity": "lr = inf",
    "NaN": "lr = nan",
    "not UTF-8": b'name = "\xff\xfe"',
    "NUL byte": 'name = "a\x00"',
    "empty": "",
    "a table where a value goes": "[seed]\nx = 1",
}


@pytest.mark.parametrize("case", sorted(NASTY_TOML))
@pytest.mark.parametrize("kind", ["simulation", "federation", "node"])
def test_nasty_toml(kind: str, case: str, tmp_path: Path):
    raw = NASTY_TOML[case]
    if kind != "simulation" and isinstance(raw, str):  # put the value inside a section
        section = "training" if kind == "federation" else "privacy"
        raw = raw if raw.startswith("[") else f"[{section}]\n{raw}"
    path = tmp_path / "c.toml"
    path.write_bytes(raw if isinstance(raw, bytes) else raw.encode("utf-8"))
    _load(kind, path)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("node = 5", "node: expected a [section]"),
        ('[node]\nname = "a"\nprivate-key = "~nosuchuser-fedguard/k"', "~user must exist"),
        ('[node]\nname = "a"\nca-cert = "' + "a" * 5000 + '"', "node.ca-cert: expected an"),
        ('[node]\nname = "a"\n[privacy]\nmax-epsilon = 1' + "0" * 400, "range TOML allows"),
    ],
)
def test_node_config_errors_found_by_fuzzing_name_the_key(text, fragment, tmp_path: Path):
    path = tmp_path / "node.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load_node_config(path)


# ---------------------------------------------------------------- the node's ledger


def _ledger(folder: Path) -> Ledger:
    ledger = Ledger(path=folder / "ledger.jsonl")
    for r, eps in ((1, 0.5), (2, 0.8), (3, 1.1)):
        entry = ledger.begin(
            run="fed-a",
            server_round=r,
            dataset_fingerprint="sha256:" + "ab" * 32,
            sample_rate=0.05,
            noise_multiplier=1.1,
            steps=40,
            max_grad_norm=1.0,
            epsilon_after=eps,
            delta=1e-5,
            accountant="rdp",
        )
        if r < 3:  # the third round "crashed": pending only
            ledger.commit(entry)
    return ledger


@pytest.fixture(scope="module")
def real_ledger(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return _ledger(tmp_path_factory.mktemp("ledger")).path.read_bytes()


def _check_ledger(path: Path) -> VerifyReport:
    ledger = Ledger(path=path)
    with no_hang():
        report = ledger.verify()
    assert isinstance(report, VerifyReport) and report.ok == (not report.problems)
    assert all(isinstance(p, str) and p and "\n" not in p for p in report.problems)
    entries = only(LedgerError, ledger.entries)
    spent = only(LedgerError, lambda: ledger.spent(dataset_fingerprint="sha256:" + "ab" * 32))
    # entries() and spent() refuse exactly what verify() reports.
    assert (entries is not None) == (spent is not None) == report.ok
    return report


json_lines = st.lists(
    st.one_of(
        st.text(max_size=40),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
            lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=4),
            max_leaves=8,
        ).map(json.dumps),
    ),
    max_size=6,
)


@FUZZ
@given(lines=json_lines, end=st.booleans())
def test_ledger_of_random_lines(lines: list[str], end: bool, tmp_path: Path):
    path = tmp_path / "ledger.jsonl"
    path.write_text("\n".join(lines) + ("\n" if end else ""), errors="surrogatepass")
    _check_ledger(path)


@FUZZ
@given(data=st.data())
def test_ledger_with_flipped_cut_or_spliced_bytes(
    data: st.DataObject, real_ledger: bytes, tmp_path
):
    bad = data.draw(mutated(real_ledger))
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(bad)
    report = _check_ledger(path)
    if report.ok:
        # Accepted only if nothing recorded changed: a cut at a line end (the documented
        # limit: the newest entries cut off) or an edit JSON reads back the same
        # (e.g. 1e-05 -> 1E-05). Anything else is tampering and must be named.
        got = [json.loads(line) for line in bad.decode().splitlines()]
        want = [json.loads(line) for line in real_ledger.decode().splitlines()]
        assert got == want[: len(got)], bad


@FUZZ
@given(order=st.permutations(range(5)))
def test_ledger_with_reordered_lines(order: list[int], real_ledger: bytes, tmp_path: Path):
    lines = real_ledger.decode().splitlines(keepends=True)
    path = tmp_path / "ledger.jsonl"
    path.write_text("".join(lines[i] for i in order))
    assert _check_ledger(path).ok == (list(order) == sorted(order))


@pytest.mark.parametrize(
    "line",
    [
        "[" * 100_000 + "]" * 100_000,  # deeper than the JSON parser's recursion
        '{"seq": 1' + "0" * 5000 + "}",  # an integer Python refuses to parse
        '{"epsilon_after": 1e999}',  # infinity without "Infinity"
        "\udcff",  # not UTF-8 once written
    ],
    ids=["deep", "huge-int", "1e999", "surrogate"],
)
def test_ledger_lines_found_by_fuzzing_are_named(line: str, real_ledger: bytes, tmp_path: Path):
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(real_ledger + line.encode("utf-8", "surrogateescape") + b"\n")
    report = _check_ledger(path)
    assert not report.ok and report.problems[-1].startswith(("line 6", "byte"))


def test_a_ledger_entry_with_an_infinite_epsilon_is_refused(real_ledger: bytes, tmp_path: Path):
    # Rewrite the last entry's epsilon as 1e999 and fix its hash: still refused.
    lines = real_ledger.decode().splitlines()
    lines[-1] = lines[-1].replace('"epsilon_after":1.1', '"epsilon_after":1e999')
    path = tmp_path / "ledger.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert "line 5: not valid JSON" in _check_ledger(path).problems


# ---------------------------------------------------------------- accountant state


@pytest.fixture(scope="module")
def real_state(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    store = AccountantStore(path=tmp_path_factory.mktemp("acct") / "accountant.json")
    accountant = Accountant(method="rdp")
    accountant.compose(GaussianEvent(noise_multiplier=1.1, sample_rate=0.05, steps=40))
    accountant.compose(GaussianEvent(noise_multiplier=0.9, sample_rate=0.1, steps=12))
    store.save(accountant)
    return store.path.read_bytes()


def _load_state(path: Path) -> None:
    got = only(ConfigError, lambda: AccountantStore(path=path).load(method="rdp"))
    assert got is None or isinstance(got, Accountant)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=10,
)
state_like = st.fixed_dictionaries(
    {},
    optional={
        "format": json_values | st.just(1),
        "method": json_values | st.sampled_from(["rdp", "prv"]),
        "events": st.lists(st.lists(json_values, max_size=4) | json_values, max_size=3),
    },
)


@FUZZ
@given(state=json_values | state_like)
def test_accountant_state_of_random_json(state: object, tmp_path: Path):
    path = tmp_path / "accountant.json"
    path.write_text(json.dumps(state), errors="surrogatepass")
    _load_state(path)


@FUZZ
@given(data=st.data())
def test_accountant_state_mutated(data: st.DataObject, real_state: bytes, tmp_path: Path):
    path = tmp_path / "accountant.json"
    path.write_bytes(data.draw(mutated(real_state)))
    _load_state(path)


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"format": 1' + "0" * 5000 + "}",
        '{"format": 1, "method": "rdp", "events": [[1e999, 0.1, 3]]}',
        '{"format": 1, "method": "rdp", "events": [[NaN, 0.1, 3]]}',
        b"\xff\xfe",
    ],
    ids=["deep", "huge-int", "1e999", "NaN", "not-utf8"],
)
def test_accountant_state_cases_found_by_fuzzing(text: str | bytes, tmp_path: Path):
    path = tmp_path / "accountant.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError, match=str(path)):
        AccountantStore(path=path).load(method="rdp")


# ---------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.safetensors"
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32)]
    save_checkpoint(
        path,
        Checkpoint(server_round=3, config_digest="abc", weights=weights, velocity=weights[:1]),
    )
    return path.read_bytes()


def _load_checkpoint(path: Path) -> None:
    got = only(DataError, lambda: load_checkpoint(path))
    assert got is None or isinstance(got, Checkpoint)


@FUZZ
@given(data=st.binary(max_size=300))
def test_checkpoint_of_random_bytes(data: bytes, tmp_path: Path):
    path = tmp_path / "checkpoint.safetensors"
    path.write_bytes(data)
    _load_checkpoint(path)


@FUZZ
@given(data=st.data())
def test_checkpoint_mutated(data: st.DataObject, real_checkpoint: bytes, tmp_path: Path):
    path = tmp_path / "checkpoint.safetensors"
    path.write_bytes(data.draw(mutated(real_checkpoint)))
    _load_checkpoint(path)


def _with_header(header: object, body: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + body


@pytest.mark.parametrize(
    "data",
    [
        # A valid safetensors file whose metadata lacks the config digest.
        _with_header({"__metadata__": {"format": "fedguard-checkpoint/1", "round": "2"}}),
        _with_header({"__metadata__": {"format": "fedguard-checkpoint/1", "round": "x"}}),
        _with_header({"__metadata__": 5}),
        _with_header([1, 2]),
        _with_header(
            {
                "__metadata__": {"format": "fedguard-checkpoint/1", "round": "1"},
                "weights.0000": {"dtype": "F32", "shape": [1 << 40], "data_offsets": [0, 4]},
            },
            b"\0" * 4,
        ),
        (1 << 63).to_bytes(8, "little") + b"{}",
        b"",
    ],
    ids=[
        "no-digest",
        "bad-round",
        "metadata-not-object",
        "header-list",
        "huge-shape",
        "huge-len",
        "empty",
    ],
)
def test_checkpoint_cases_found_by_fuzzing(data: bytes, tmp_path: Path):
    path = tmp_path / "checkpoint.safetensors"
    path.write_bytes(data)
    with pytest.raises(DataError, match="move it away"):
        load_checkpoint(path)
