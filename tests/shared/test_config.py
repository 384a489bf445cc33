"""Config: TOML + options, validation messages that name key, allowed values and value."""

from pathlib import Path

import pytest

from fedguard.config import SimulationConfig, load_simulation_config
from fedguard.errors import ConfigError


def test_defaults_are_the_demo():
    cfg = SimulationConfig()
    assert (cfg.dataset, cfg.clients, cfg.epsilon, cfg.delta) == ("digits", 10, 3.0, 1e-5)
    assert cfg.cohort_size == 10


def test_toml_keys_match_options_and_options_override(tmp_path: Path):
    path = tmp_path / "sim.toml"
    path.write_text('clients = 20\nclients-per-round = 5\nno-dp = true\nout = "x"\n')
    cfg = load_simulation_config(path=path, overrides={"clients-per-round": 7, "rounds": None})
    assert cfg.clients == 20
    assert cfg.clients_per_round == 7  # the option wins
    assert cfg.no_dp is True
    assert cfg.out == Path("x")
    assert cfg.rounds == SimulationConfig().rounds  # None means "not given"


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        ({"epsilon": 0.0}, ["--epsilon", "> 0", "0.0"]),
        ({"epsilon": float("nan")}, ["--epsilon", "nan"]),
        ({"delta": 1.0}, ["--delta", "< 1", "1.0"]),
        ({"model": "resnet"}, ["--model", "logreg", "mlp", "cnn", "'resnet'"]),
        ({"partition": "x"}, ["--partition", "iid", "dirichlet", "shards", "'x'"]),
        ({"clients": 0}, ["--clients", ">= 1", "0"]),
        ({"clients": 4, "clients-per-round": 5}, ["--clients-per-round", "5"]),
        ({"engine": "spark"}, ["--engine", "inprocess", "flower", "'spark'"]),
        ({"accountant": "gdp"}, ["--accountant", "rdp", "prv"]),
    ],
)
def test_bad_values_name_key_allowed_and_received(overrides, fragments):
    with pytest.raises(ConfigError) as info:
        load_simulation_config(overrides=overrides)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_file_errors_name_the_file_and_key(tmp_path: Path):
    path = tmp_path / "sim.toml"
    path.write_text("clients = 'ten'\n")
    with pytest.raises(ConfigError, match=r"sim\.toml: clients: expected an integer, got 'ten'"):
        load_simulation_config(path=path)
    path.write_text("colour = 1\n")
    with pytest.raises(ConfigError, match=r"sim\.toml: colour: expected a known key: .*clients"):
        load_simulation_config(path=path)
    path.write_text("epsilon = -1\n")
    with pytest.raises(ConfigError, match=r"sim\.toml: --epsilon: .*-1"):
        load_simulation_config(path=path)
    path.write_text("clients = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_simulation_config(path=path)
    with pytest.raises(ConfigError, match="--config: cannot read"):
        load_simulation_config(path=tmp_path / "missing.toml")


def test_bools_are_not_numbers():
    with pytest.raises(ConfigError, match="--rounds"):
        SimulationConfig(rounds=True)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no-dp"):
        load_simulation_config(overrides={"no-dp": 1})
