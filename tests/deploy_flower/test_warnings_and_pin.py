"""Flower's deprecations reach the test output, and the Flower pin is stated once.

A deprecation is how Flower says what its next release removes: the suite must show it
(pyproject's pytest ``filterwarnings`` ignores only known ones, each from one module).
The pin is :data:`fedguard.deploy.flower.FLWR_VERSION`; pyproject repeats it for pip, and
every copy must agree.
"""

import re
import tomllib
import warnings
from pathlib import Path

import pytest

from fedguard.deploy.flower import FLWR_VERSION

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _shown(message: str, module: str) -> list[str]:
    """What the active filters let through of a DeprecationWarning from ``module``."""
    with warnings.catch_warnings(record=True) as seen:  # keeps the filters as they are
        warnings.warn_explicit(
            message, DeprecationWarning, f"{module.replace('.', '/')}.py", 1, module=module,
            registry={},
        )  # fmt: skip
    return [str(w.message) for w in seen]


def test_a_flower_deprecation_is_shown():
    message = "`start_supernode` is deprecated and will be removed in Flower 1.40"
    assert _shown(message, "flwr.supernode.app") == [message]


@pytest.mark.parametrize(
    ("message", "module"),
    [
        ("websockets.legacy is deprecated; see the upgrade guide", "websockets.legacy"),
        ("'click.utils.get_text_stream' is deprecated and will be removed", "typer"),
    ],
)
def test_known_deprecations_are_filtered_only_where_they_come_from(message, module):
    assert _shown(message, module) == []
    assert _shown(message, "flwr.cli.app") == [message]  # the same text from Flower: shown


def flower_pins(pyproject: Path) -> list[str]:
    """Every ``flwr`` version pinned in a pyproject's dependencies and extras."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    requirements = [*project.get("dependencies", [])]
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    pins = []
    for requirement in requirements:
        if match := re.fullmatch(r"flwr(\[[^\]]*\])?\s*(==|>=|<=|~=|<|>)\s*(\S+)", requirement):
            pins.append(f"{match[2]}{match[3]}")
        elif re.match(r"flwr\b", requirement):
            pins.append(requirement)  # unpinned or another form: never equal to ==X
    return pins


def test_every_flower_pin_is_the_adapters(tmp_path):
    pins = flower_pins(PYPROJECT)
    assert len(pins) >= 2  # the dependency and the ray extra
    assert set(pins) == {f"=={FLWR_VERSION}"}
    drifted = tmp_path / "pyproject.toml"
    drifted.write_text(
        PYPROJECT.read_text(encoding="utf-8").replace(
            f'"flwr[simulation]=={FLWR_VERSION}"', '"flwr[simulation]==1.40.0"'
        ),
        encoding="utf-8",
    )
    assert set(flower_pins(drifted)) == {f"=={FLWR_VERSION}", "==1.40.0"}
