"""The one Flower version whose internals fedguard's workarounds were written against.

``pyproject.toml`` repeats the pin (``flwr==...`` in the dependencies and the ``ray``
extra) because pip must see it; ``tests/deploy_flower/test_version_pin.py`` checks that
every copy agrees with :data:`FLWR_VERSION`.
"""

from __future__ import annotations

from importlib import metadata

from fedguard.errors import FedguardError

__all__ = ["FLWR_VERSION", "check_flower_version", "installed_flower_version"]

FLWR_VERSION = "1.39.0"
"""The only Flower version whose internals the patches in this package were written against."""


def installed_flower_version() -> str | None:
    """The installed ``flwr`` distribution's version, or None when it is not installed."""
    try:
        return metadata.version("flwr")
    except metadata.PackageNotFoundError:
        return None


def check_flower_version() -> None:
    """Refuse to patch a Flower other than :data:`FLWR_VERSION`.

    Raises
    ------
    FedguardError
        Naming the installed and the pinned version.
    """
    installed = installed_flower_version()
    if installed != FLWR_VERSION:
        raise FedguardError(
            f"flwr {installed or 'is not installed'}"
            f"{' is installed' if installed else ''}, but fedguard.deploy.flower is"
            f" written for flwr=={FLWR_VERSION} (it patches Flower internals); install"
            f" flwr=={FLWR_VERSION} or review fedguard/deploy/flower/ for the new version"
            " (docs/flower-upgrade.md)"
        )
