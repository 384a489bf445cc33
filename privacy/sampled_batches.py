"""The Poisson-sampled batches of DP-SGD, from preloaded tensors or a map-style data set.

Every step draws ``torch.rand(n) < q`` from the caller's generator, on its device, exactly
as before there was a data-set path: for the same generator state, a data set wrapping the
tensors yields the very batches the tensors do, and the trained weights are equal bit for
bit. From a data set only the sampled records are read (:func:`fedguard._record_reads.
read_records`), so the data set never has to fit in memory.

``read_ahead=True`` reads the next step's records on a background thread while the current
step trains. That needs the next step's sample before this step's noise, so the generator's
draws come in another order (sample 1, sample 2, noise 1, sample 3, noise 2, ...): each draw
is still a fresh draw of the same generator, so the sampling and the noise have the same
distribution and the same accounting, but the weights differ from ``read_ahead=False``.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import torch

from fedguard._record_reads import ReadAhead, read_records

__all__ = ["Batch", "poisson_steps"]

Batch = tuple[torch.Tensor, torch.Tensor] | None  # None: nobody was sampled this step


def poisson_steps(
    *,
    x: torch.Tensor | None,
    y: torch.Tensor | None,
    data: Any,
    num_examples: int,
    sample_rate: float,
    steps: int,
    generator: torch.Generator,
    device: torch.device,
    read_ahead: bool = False,
) -> Generator[Batch, None, None]:
    """Yield one batch ``(x, y long)`` on ``device`` per step, or None for an empty sample.

    Pass either the tensors ``x, y`` (already on ``device``) or ``data``, a map-style data
    set of ``num_examples`` records. Close the iterator (``finally: it.close()``) to stop a
    read in flight.
    """

    def sample() -> torch.Tensor:
        # Poisson sampling: each example independently, with probability sample_rate.
        mask = torch.rand(num_examples, generator=generator, device=generator.device)
        return (mask < sample_rate).nonzero(as_tuple=True)[0]

    if data is None:
        if x is None or y is None:
            raise ValueError("poisson_steps needs the tensors x, y or a data set")
        for _ in range(steps):
            idx = sample().to(x.device)
            yield (x[idx], y[idx].long()) if idx.numel() else None
        return
    if not read_ahead:
        for _ in range(steps):
            chosen = sample().tolist()
            yield _to(read_records(data, chosen), device) if chosen else None
        return
    with ReadAhead(data) as ahead:
        upcoming = sample().tolist() if steps else []
        if upcoming:
            ahead.submit(upcoming)
        for step in range(steps):
            batch = ahead.take() if upcoming else None
            # The next sample is drawn before this step's noise, so that its records are
            # read while this step trains.
            upcoming = sample().tolist() if step + 1 < steps else []
            if upcoming:
                ahead.submit(upcoming)
            yield None if batch is None else _to(batch, device)


def _to(batch: tuple[torch.Tensor, torch.Tensor], device: torch.device) -> Batch:
    x, y = batch
    return x.to(device), y.to(device).long()
