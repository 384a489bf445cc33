"""Every strategy of federation.toml is available to simulations too (fedguard.fl.strategies)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedguard.cli import main
from fedguard.config import SimulationConfig, load_simulation_config
from fedguard.fl.loop import request_for
from fedguard.fl.strategies import STRATEGIES, FedAdam, FedAvgM, server_optimizer
from fedguard.simulations.runner import simulate

BASE = SimulationConfig(
    dataset="digits", model="logreg", clients=3, rounds=2, batch_size=32, lr=0.5, seed=3
)


def _rows(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_default_is_fedavgm_as_before(tmp_path: Path) -> None:
    assert BASE.strategy == "fedavgm"
    server = server_optimizer(strategy=BASE.strategy, server_lr=BASE.server_lr, server_momentum=0.5)
    assert isinstance(server, FedAvgM) and server.server_momentum == 0.5
    assert request_for(BASE, 1).prox_mu == 0.0  # not fedprox: no proximal term


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_strategy_runs_and_fedprox_fedadam_change_the_model(
    tmp_path: Path, strategy: str
) -> None:
    cfg = BASE.replace(
        strategy=strategy, prox_mu=5.0, server_lr=0.05 if strategy == "fedadam" else 1.0
    )
    simulate(cfg.replace(out=tmp_path / strategy))
    simulate(BASE.replace(strategy="fedavg", out=tmp_path / "ref"))
    ours, ref = _rows(tmp_path / strategy), _rows(tmp_path / "ref")
    assert [r["epsilon_max"] for r in ours] == [r["epsilon_max"] for r in ref]
    if strategy in ("fedprox", "fedadam"):
        assert [r["loss"] for r in ours] != [r["loss"] for r in ref]
    else:  # fedavgm without momentum is fedavg
        assert [r["loss"] for r in ours] == [r["loss"] for r in ref]
    if strategy == "fedprox":
        assert request_for(cfg, 1).prox_mu == 5.0
    if strategy == "fedadam":
        assert isinstance(
            server_optimizer(strategy=strategy, server_lr=0.05, server_momentum=0), FedAdam
        )


def test_strategy_from_a_config_file_and_a_bad_one_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "sim.toml"
    path.write_text('strategy = "fedprox"\nprox-mu = 0.1\n')
    cfg = load_simulation_config(path=path)
    assert (cfg.strategy, cfg.prox_mu) == ("fedprox", 0.1)
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--strategy", "sgd", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1
    assert "--strategy: expected one of fedavg, fedavgm, fedadam, fedprox, got 'sgd'" in err
