"""#16 point 2: the wheel (what `pip install .` or an index serves) holds every subpackage.

Built once here without network (the venv's setuptools, no build isolation). The old
pyproject listed packages by hand and left out fedguard.privacy.secagg, fedguard.transport
and fedguard.proto: every non-editable install failed with ModuleNotFoundError.
`make wheel-check` (run by CI) goes further: a fresh virtual environment, the wheel
installed from the file, a simulation and a one-round loopback federation run from it.

Built from a clean copy of the sources: setuptools reuses the checkout's build/lib, where a
module deleted or moved since the last build stays and goes into the wheel (#20.6 found
fedguard/federation.py and the benchmarks shipped that way after they had moved).
"""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROOTS = {
    "fedguard": "fedguard",
    "fedguard.privacy": "privacy",
    "fedguard.client": "client",
    "fedguard.server": "server",
    "fedguard.simulations": "simulations",
}


def _source_modules() -> set[str]:
    found = set()
    for package, folder in ROOTS.items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder)
            if all((ROOT / folder / p / "__init__.py").exists() for p in rel.parents[:-1]):
                found.add(f"{package.replace('.', '/')}/{rel.as_posix()}")
    return found


# Build outputs, caches and environments: never sources.
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "runs", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"
)


def test_the_wheel_holds_every_module_of_every_subpackage(tmp_path: Path):
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=NOT_SOURCES, symlinks=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path), str(src)],
        check=True, capture_output=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("fedguard-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(_source_modules() - names)
    assert not missing, f"not in the wheel: {missing}"
    stale = sorted(n for n in names if n.endswith(".py") and n not in _source_modules())
    assert not stale, f"in the wheel but not in the sources: {stale}"
    for needed in (
        "fedguard/privacy/secagg/__init__.py",
        "fedguard/transport/__init__.py",
        "fedguard/proto/v1/secagg_pb2.py",
        "fedguard/proto/v1/secagg_pb2.pyi",
    ):
        assert needed in names
    assert not any(n.split("/")[0] in {"client", "server", "privacy", "tests"} for n in names)
    # #20.6: benchmarks are dev tools in benchmarks/, never installed with the product.
    shipped_benchmarks = sorted(
        n
        for n in names
        if n.split("/")[0] == "benchmarks"
        or Path(n).name.startswith(("bench_", "crosscheck_table", "gpu_check"))
    )
    assert not shipped_benchmarks, f"benchmark code in the wheel: {shipped_benchmarks}"
