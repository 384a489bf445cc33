"""The one home of numeric validators and config coercion (fedguard._checks)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from fedguard._checks import coerce, integer, real
from fedguard.errors import ConfigError


@pytest.mark.parametrize("bad", [True, False, 1.0, "1", None, 0, -3])
def test_integer_refuses_bools_floats_text_and_small_values(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"^batch_size: expected an integer >= 1, got "):
        integer("batch_size", bad, minimum=1)


def test_integer_takes_numpy_integers() -> None:
    out = integer("steps", np.int64(7), minimum=1)
    assert out == 7 and type(out) is int


@pytest.mark.parametrize("bad", [True, math.nan, math.inf, -math.inf, "0.1", None, -0.5])
def test_real_refuses_bools_non_finite_text_and_failed_property(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"^f.toml: lr: expected a number >= 0, got "):
        real("lr", bad, allowed="a number >= 0", ok=lambda v: v >= 0, source="f.toml")


@pytest.mark.parametrize(
    ("annotation", "value", "message"),
    [
        ("int", True, "an integer"),
        ("int | None", 1.5, "an integer"),
        ("float", "1", "a number"),
        ("bool", 1, "true or false"),
        ("str", 3, "a string"),
        ("list[str]", "a", "a list"),
        ("Path", 3, "a folder path"),
    ],
)
def test_coerce_refuses_odd_conversions(annotation: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"^k: expected {message}, got "):
        coerce("k", value, annotation, source=None)


def test_coerce_finite_refuses_nan_and_keeps_ints_as_floats() -> None:
    with pytest.raises(ConfigError, match=r"^k: expected a finite number, got nan"):
        coerce("k", math.nan, "float", source=None, finite=True)
    assert coerce("k", 2, "float", source=None, finite=True) == 2.0
    assert coerce("k", "out", "Path | None", source=None) == Path("out")


def test_both_config_loaders_coerce_alike(tmp_path: Path) -> None:
    """simulate's config file and federation.toml refuse a bool where an integer goes alike."""
    from fedguard.config import load_simulation_config
    from fedguard.deploy_config import load_federation_config

    sim = tmp_path / "sim.toml"
    sim.write_text("rounds = true\n")
    fed = tmp_path / "federation.toml"
    fed.write_text("[training]\nlocal-epochs = true\n")
    with pytest.raises(ConfigError) as a:
        load_simulation_config(path=sim)
    with pytest.raises(ConfigError) as b:
        load_federation_config(fed)
    assert str(a.value) == f"{sim}: rounds: expected an integer, got True"
    assert str(b.value) == f"{fed}: training.local-epochs: expected an integer, got True"
