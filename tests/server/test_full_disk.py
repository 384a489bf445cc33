"""#15 point 6: when the server's disk fills, the launcher names the disk (its log, on that
disk, could not record why). A real full file system: a 1 MiB tmpfs (root only)."""

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedguard.deploy_config import load_federation_config
from fedguard.server.launcher import ServerFailedError, _check_finished


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)])
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        with contextlib.suppress(OSError), (mount / "filler").open("wb") as fh:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_full_server_disk_is_named(tmp_path: Path, full_disk: Path):
    toml = tmp_path / "federation.toml"
    toml.write_text(
        f'state-dir = "{full_disk / "state"}"\nout = "{tmp_path / "results"}"\n'
        "[server]\ninsecure = true\n"
    )
    cfg = load_federation_config(toml)
    with pytest.raises(ServerFailedError) as err:
        _check_finished(cfg, flwr_run_status=0)
    text = str(err.value)
    assert f"the disk holding {cfg.state_dir} is full" in text and "superlink.log" not in text
