"""The generated code in fedguard/proto is exactly what the pinned grpcio-tools makes from
protos/ (STYLE.md rule 10): a hand edit or a forgotten regeneration fails here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIX = "run `make protos` and commit the result"


def _generated(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for pattern in ("*_pb2.py", "*_pb2.pyi")
        for p in folder.rglob(pattern)
    }


def test_generated_protobuf_code_is_fresh(tmp_path):
    protos = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "protos").rglob("*.proto"))
    assert protos, "no .proto files under protos/"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-Iprotos",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            *protos,
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    fresh = _generated(tmp_path / "fedguard" / "proto")
    committed = _generated(ROOT / "fedguard" / "proto")
    assert fresh, "grpc_tools.protoc generated nothing"
    for name, content in sorted(fresh.items()):
        path = f"fedguard/proto/{name}"
        assert name in committed, f"{path} is missing: {FIX}"
        assert committed[name] == content, f"{path} is stale (differs from protos/): {FIX}"
    for name in sorted(set(committed) - set(fresh)):
        raise AssertionError(f"fedguard/proto/{name} has no .proto source: delete it ({FIX})")
