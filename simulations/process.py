"""What the simulation engines set in the process they own: torch's threads and glibc's
heap. Only engines call this (``fedguard simulate``, a Ray worker); deployed nodes don't.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

import torch

__all__ = ["own_process"]

_log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_KEEP = 1 << 30  # 1 GiB: blocks up to this size come from and go back to the heap
_tuned = False


def own_process(*, threads: int) -> None:
    """Set torch's thread count and keep freed memory in the heap (once per process).

    Small models are dominated by per-op overhead: few threads are often faster, and the
    engine owns its process, so it may choose. A batched step allocates tens of MB of
    activations; glibc hands large freed blocks back to the OS, so every step page-faulted
    them in again (5-13k minor faults per 100-client CNN step). Kept in the heap, a round of
    100 CNN clients on digits took 0.061-0.067 s instead of 0.087, of 700 0.17-0.18 s
    instead of 0.21-0.23 (``python -m benchmarks.bench_cohort``); MLP rounds, whose
    activations are small, did not change. The cost: the process keeps its peak heap. Both
    thresholds are set, as one alone disables glibc's dynamic threshold and was slower.
    Outside glibc nothing is changed.
    """
    global _tuned
    torch.set_num_threads(threads)
    if _tuned:
        return
    _tuned = True
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None) if libc is not None else None
    except OSError:
        mallopt = None
    if mallopt is None:
        _log.debug("no glibc mallopt: the heap is left as it is")
        return
    if not (mallopt(_M_MMAP_THRESHOLD, _KEEP) and mallopt(_M_TRIM_THRESHOLD, _KEEP)):
        _log.debug("mallopt refused the heap thresholds: the heap is left as it is")
