"""AccountantStore: durable, private, atomic."""

from __future__ import annotations

import json
import os
import stat

import pytest

from fedguard.errors import ConfigError
from fedguard.privacy import Accountant, AccountantMethod, AccountantStore, GaussianEvent

DELTA = 1e-5


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _filled(method: str = "rdp") -> Accountant:
    acc = Accountant(method=method)
    acc.compose(GaussianEvent(1.1, 0.05, 40))
    acc.compose(GaussianEvent(0.9, 0.05, 20))
    return acc


def test_missing_file_gives_a_fresh_accountant(tmp_path):
    acc = AccountantStore(path=tmp_path / "nope" / "a.json").load(method="prv")
    assert acc.method is AccountantMethod.PRV and acc.events == ()
    assert not (tmp_path / "nope").exists()  # loading never creates anything


@pytest.mark.parametrize("method", ["rdp", "prv"])
def test_save_load_round_trip(tmp_path, method):
    store = AccountantStore(path=tmp_path / "client-3.json")
    acc = _filled(method)
    store.save(acc)
    again = AccountantStore(path=tmp_path / "client-3.json").load(method=method)
    assert again.events == acc.events
    assert again.get_privacy_spent(delta=DELTA) == acc.get_privacy_spent(delta=DELTA)
    assert json.loads((tmp_path / "client-3.json").read_text())["method"] == method


def test_file_and_folder_are_private(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "state" / "accountants" / "c.json"
        AccountantStore(path=path).save(_filled())
    finally:
        os.umask(old)
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["c.json"]  # no temp file left


def test_existing_folder_mode_is_left_alone(tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    AccountantStore(path=folder / "c.json").save(_filled())
    assert _mode(folder) == 0o755
    assert _mode(folder / "c.json") == 0o600


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "c.json"
    store = AccountantStore(path=path)
    store.save(_filled())
    before = path.read_bytes()

    bigger = _filled()
    bigger.compose(GaussianEvent(2.0, 0.5, 1000))

    def fail(*_args, **_kwargs):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk gone"):
        store.save(bigger)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]
    assert store.load(method="rdp").events == _filled().events


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_folder_keeps_the_previous_file(tmp_path):
    folder = tmp_path / "ro"
    store = AccountantStore(path=folder / "c.json")
    store.save(_filled())
    before = (folder / "c.json").read_bytes()
    folder.chmod(0o500)
    try:
        with pytest.raises(PermissionError):
            store.save(Accountant(method="rdp"))
    finally:
        folder.chmod(0o700)
    assert (folder / "c.json").read_bytes() == before


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "not a valid accountant state file"),
        (b"{not json", "not a valid accountant state file"),
        (b"\xff\xfe\x00", "not a UTF-8 accountant state file"),
        (b'{"format": 1, "method": "rdp", "events": [[NaN, 0.1, 10]]}', "non-finite"),
        (b'{"format": 1, "method": "rdp", "events": [[Infinity, 0.1, 10]]}', "non-finite"),
        (b'{"format": 1, "method": "rdp", "events": [[-1, 0.1, 10]]}', r"events\[0\]\.noise"),
        (b'{"format": 7, "method": "rdp", "events": []}', "format"),
        (b"[]", "accountant state"),
    ],
)
def test_corrupt_file_is_refused_naming_it(tmp_path, content, match):
    path = tmp_path / "client-9.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=match) as info:
        AccountantStore(path=path).load(method="rdp")
    assert str(info.value).startswith(str(path))
    assert "\n" not in str(info.value)


def test_other_method_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "c.json"
    AccountantStore(path=path).save(_filled("prv"))
    with pytest.raises(
        ConfigError, match="state of prv cannot be loaded into a rdp accountant"
    ) as info:
        AccountantStore(path=path).load(method="rdp")
    assert str(info.value).startswith(str(path))


def test_save_rejects_non_accountants(tmp_path):
    with pytest.raises(TypeError, match="Accountant"):
        AccountantStore(path=tmp_path / "c.json").save({"format": 1})  # type: ignore[arg-type]
