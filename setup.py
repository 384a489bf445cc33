"""Packages are found, not listed: every folder with an ``__init__.py`` below the roots.

pyproject.toml holds everything else. The top-level folders are subpackages of the one
import namespace ``fedguard`` (DESIGN.md); setuptools' static ``packages.find`` cannot map
several roots into one namespace, so this file walks them. Nothing named ``client`` or
``server`` is ever installed at the top level.
"""

from pathlib import Path

from setuptools import find_packages, setup

ROOTS = {
    "fedguard": "fedguard",
    "fedguard.privacy": "privacy",
    "fedguard.client": "client",
    "fedguard.server": "server",
    "fedguard.simulations": "simulations",
}


def _packages() -> list[str]:
    found = []
    for package, folder in ROOTS.items():
        if not (Path(folder) / "__init__.py").is_file():
            raise SystemExit(f"setup.py: {folder}/__init__.py is missing")
        found.append(package)
        found += [f"{package}.{sub}" for sub in find_packages(folder, exclude=["*.tests*"])]
    return sorted(set(found))


setup(packages=_packages(), package_dir=ROOTS)
