"""Every package declares __all__ truthfully (Opacus shipped a name in __all__ that did not
exist, so `import *` raised), and privacy never imports Flower."""

import importlib
import subprocess
import sys

import pytest

PACKAGES = [
    "fedguard",
    "fedguard.task",
    "fedguard.fl",
    "fedguard.transport",
    "fedguard.privacy",
    "fedguard.client",
    "fedguard.server",
    "fedguard.simulations",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_star_import_works(name):
    module = importlib.import_module(name)
    assert hasattr(module, "__all__"), f"{name} has no __all__"
    namespace: dict[str, object] = {}
    exec(f"from {name} import *", namespace)
    for public in module.__all__:
        assert public in namespace


def test_privacy_does_not_import_flower():
    code = (
        "import sys, fedguard.privacy; "
        "print(any(m == 'flwr' or m.startswith('flwr.') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_no_generic_top_level_modules_installed():
    import site
    from pathlib import Path

    for folder in map(Path, site.getsitepackages()):
        for generic in ("client", "server", "privacy", "simulations", "protos", "tests"):
            assert not (folder / generic).exists(), f"{folder / generic} installed"
            assert not (folder / f"{generic}.py").exists()
