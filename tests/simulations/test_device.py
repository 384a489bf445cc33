"""--device and the Flower engine's per-client resources: validation, what Ray is given,
and in-process runs on the chosen device (CUDA tests are skipped without CUDA)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedguard.config import DEVICES, SimulationConfig, load_simulation_config, resolve_device
from fedguard.errors import ConfigError
from fedguard.simulations.client_state import AccountantCache
from fedguard.simulations.flower_engine import ray_backend_config
from fedguard.simulations.runner import simulate

HAS_CUDA = torch.cuda.is_available()
CUDA = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
NO_CUDA = pytest.mark.skipif(HAS_CUDA, reason="checks the refusal on a machine without CUDA")


def _one_line_error(overrides: dict, *fragments: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_simulation_config(overrides=overrides)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_device_defaults_to_cpu_and_auto_follows_cuda():
    assert SimulationConfig().device == "cpu" and DEVICES == ("cpu", "cuda", "auto")
    assert resolve_device("auto") == ("cuda" if HAS_CUDA else "cpu")
    assert resolve_device("cpu") == "cpu"
    _one_line_error({"device": "tpu"}, "--device", "cpu, cuda, auto", "'tpu'")


@NO_CUDA
def test_cuda_without_cuda_is_one_line_naming_the_option_and_value(tmp_path: Path):
    _one_line_error({"device": "cuda"}, "--device", "cpu or auto", "'cuda'")
    out = subprocess.run(
        [sys.executable, "-m", "fedguard", "simulate", "--device", "cuda", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"},
    )
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "fedguard: error: --device: expected cpu or auto on this machine "
        "(torch sees no CUDA device), got 'cuda'"
    )
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        ({"client-cpus": 0}, ["--client-cpus", "> 0", "0.0"]),
        ({"client-cpus": 1.5}, ["--client-cpus", "a fraction <= 1 or a whole number", "1.5"]),
        ({"client-gpus": -0.5}, ["--client-gpus", ">= 0", "-0.5"]),
        ({"client-gpus": 2.5}, ["--client-gpus", "a fraction <= 1 or a whole number", "2.5"]),
        ({"client-gpus": float("nan")}, ["--client-gpus", "nan"]),
        ({"client-cpus": True}, ["client-cpus", "a number", "True"]),
        (
            {"engine": "flower", "client-cpus": (os.cpu_count() or 1) + 1},
            ["--client-cpus", "at most the", "CPU(s) of this machine"],
        ),
    ],
)
def test_client_resources_are_validated(overrides, fragments):
    _one_line_error(overrides, *fragments)


@NO_CUDA
def test_gpus_for_flower_clients_need_a_gpu_and_cuda_is_in_process_only():
    _one_line_error(
        {"engine": "flower", "client-gpus": 0.25}, "--client-gpus", "0 on this machine", "0.25"
    )
    # The in-process engine does not use Ray: the fraction is accepted and unused there.
    assert load_simulation_config(overrides={"client-gpus": 0.25}).client_gpus == 0.25


@CUDA
def test_cuda_device_is_refused_for_the_flower_engine():
    _one_line_error({"engine": "flower", "device": "cuda"}, "--device", "--engine flower")


def test_ray_gets_the_per_client_fractions_and_the_gpus_torch_sees():
    cfg = load_simulation_config(overrides={"engine": "flower", "client-cpus": 0.5})
    backend = ray_backend_config(config=cfg)
    assert backend["client_resources"] == {"num_cpus": 0.5, "num_gpus": 0.0}
    assert backend["init_args"]["num_gpus"] == torch.cuda.device_count()
    assert backend["init_args"]["num_cpus"] == (os.cpu_count() or 1)
    default = ray_backend_config(config=SimulationConfig())["client_resources"]
    assert default == {"num_cpus": 1.0, "num_gpus": 0.0}


def _small(tmp_path: Path, name: str, **changes) -> SimulationConfig:
    base = dict(clients=4, rounds=2, batch_size=32, lr=0.5, epsilon=2.0, model="mlp", hidden=32)
    return SimulationConfig(out=tmp_path / name, **{**base, **changes})


def _rows(out: Path) -> list[dict]:
    return [
        {k: v for k, v in json.loads(line).items() if k != "seconds"}
        for line in (out / "metrics.jsonl").read_text().splitlines()
    ]


@NO_CUDA
def test_auto_on_a_cpu_machine_is_the_cpu_run_exactly(tmp_path: Path):
    simulate(_small(tmp_path, "cpu"))
    simulate(_small(tmp_path, "auto", device="auto"))
    assert _rows(tmp_path / "auto") == _rows(tmp_path / "cpu")


@CUDA
def test_in_process_on_cuda_learns_and_spends_what_the_cpu_run_spends(tmp_path: Path):
    cpu = simulate(_small(tmp_path, "cpu", rounds=4))
    gpu = simulate(_small(tmp_path, "cuda", rounds=4, device="cuda"))
    assert gpu.final_epsilon_max == pytest.approx(cpu.final_epsilon_max, rel=1e-12)
    assert gpu.final_accuracy > 0.3 and abs(gpu.final_accuracy - cpu.final_accuracy) < 0.2
    rel = Path("state") / "client-00000" / "accountant.json"
    assert (tmp_path / "cuda" / rel).read_text() == (tmp_path / "cpu" / rel).read_text()


def test_accountant_cache_writes_each_client_once_at_flush(tmp_path: Path):
    from fedguard.privacy import GaussianEvent

    cache = AccountantCache(state_dir=tmp_path)
    event = GaussianEvent(noise_multiplier=1.0, sample_rate=0.5, steps=2)
    for cid in (0, 3):
        store = cache.store(cid)
        acc = store.load(method="rdp")
        acc.compose(event)
        store.save(acc)
    again = cache.store(3).load(method="rdp")
    again.compose(event)
    cache.store(3).save(again)
    assert not any(tmp_path.iterdir())  # nothing on disk before the flush
    assert cache.flush() == 2
    saved = json.loads((tmp_path / "client-00003" / "accountant.json").read_text())
    assert saved["events"] == [[1.0, 0.5, 4]]
    assert (tmp_path / "client-00000" / "accountant.json").stat().st_mode & 0o777 == 0o600
    with pytest.raises(ConfigError, match="prv"):  # a method mismatch is still refused
        cache.store(0).load(method="prv")


def test_a_cached_accountant_changes_only_when_saved(tmp_path: Path):
    """The cache hands out copies: composing into a loaded accountant that is then not
    saved (a refused or failed client) leaves the held history as it was."""
    from fedguard.privacy import GaussianEvent

    cache = AccountantCache(state_dir=tmp_path)
    event = GaussianEvent(noise_multiplier=1.0, sample_rate=0.5, steps=2)
    store = cache.store(1)
    acc = store.load(method="rdp")
    acc.compose(event)
    store.save(acc)
    acc.compose(event)  # after the save: not held
    unsaved = cache.store(1).load(method="rdp")
    unsaved.compose(event)  # never saved
    assert cache.store(1).load(method="rdp").events == (event,)
    cache.flush()
    saved = json.loads((tmp_path / "client-00001" / "accountant.json").read_text())
    assert saved["events"] == [[1.0, 0.5, 2]]
