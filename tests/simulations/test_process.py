"""The engines' process settings (simulations/process.py): freed memory stays in the heap,
so a batched step does not page-fault its activations in again every step."""

from __future__ import annotations

import ctypes.util
import platform
import subprocess
import sys

import pytest

_CHILD = """
import sys
import numpy as np
from fedguard.simulations.process import own_process

def resident() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

if sys.argv[1] == "own":
    own_process(threads=1)
    own_process(threads=1)  # twice: the second call changes nothing
before = resident()
block = np.ones(64 << 20, dtype=np.uint8)  # 64 MiB, touched
del block
print((resident() - before) >> 20)
"""


@pytest.mark.skipif(
    platform.system() != "Linux" or "libc" not in str(ctypes.util.find_library("c")),
    reason="glibc only",
)
def test_freed_memory_stays_in_the_heap_only_in_an_engines_process():
    def kept_mib(mode: str) -> int:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, check=True
        )
        return int(done.stdout.strip())

    assert kept_mib("default") < 8  # glibc unmapped the block when it was freed
    assert kept_mib("own") >= 60  # kept for the next step's activations
