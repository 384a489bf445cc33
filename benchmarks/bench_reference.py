"""The hand-written reference loop ``make bench-sim`` holds fedguard's engine against.

Plain PyTorch + Opacus, written the way a researcher would write a federated DP-SGD loop
without a framework: ``PrivacyEngine.make_private`` once (Poisson sampling), then for
every client of every round load the global weights, draw the client's Poisson batches
with Opacus's ``DPDataLoader``, take DP-SGD steps, and add the update to a running
weighted sum; after the round apply the mean, report epsilon once (every client has the
same history here) and the test accuracy. Nothing from fedguard runs in the loop: the
caller hands over the data already split into clients (fedguard's loader and
partitioner, so both see the same clients) and the noise multiplier.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812 - conventional alias
from opacus import PrivacyEngine
from opacus.accountants import RDPAccountant
from opacus.data_loader import DPDataLoader
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["ReferenceRun", "run_reference"]


@dataclass(frozen=True, kw_only=True)
class ReferenceRun:
    """Seconds per round (each round: train every client, aggregate, epsilon, accuracy)."""

    round_seconds: tuple[float, ...]
    final_accuracy: float
    epsilon: float


def run_reference(
    *,
    model: Callable[[], nn.Module],
    xs: Sequence[torch.Tensor],
    ys: Sequence[torch.Tensor],
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    rounds: int,
    batch_size: int,
    lr: float,
    noise_multiplier: float,
    max_grad_norm: float,
    delta: float,
    device: str,
    seed: int = 0,
) -> ReferenceRun:
    """Run the reference federation; every client trains every round."""
    dev = torch.device(device)
    net = model().to(dev)
    sampler_rng = torch.Generator().manual_seed(seed)  # DPDataLoader samples on the CPU
    noise_rng = torch.Generator(device=dev).manual_seed(seed + 1)
    first = DataLoader(TensorDataset(xs[0], ys[0]), batch_size=batch_size)
    with warnings.catch_warnings():  # "Secure RNG turned off": fedguard's is off too
        warnings.simplefilter("ignore", UserWarning)
        engine = PrivacyEngine(accountant="rdp")
    module, optimizer, _ = engine.make_private(
        module=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=lr),
        data_loader=first,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        poisson_sampling=True,
        noise_generator=noise_rng,
    )
    accountant = RDPAccountant()
    weights = {k: v.detach().clone() for k, v in net.state_dict().items()}
    seconds: list[float] = []
    steps_done, accuracy, epsilon = 0, 0.0, 0.0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        for _ in range(rounds):
            start = time.perf_counter()
            total = {k: torch.zeros_like(v) for k, v in weights.items()}
            examples = 0
            for x, y in zip(xs, ys, strict=True):
                net.load_state_dict(weights)
                loader = DPDataLoader.from_data_loader(
                    DataLoader(TensorDataset(x, y), batch_size=batch_size), generator=sampler_rng
                )
                optimizer.expected_batch_size = max(1, round(len(x) / len(loader)))
                for xb, yb in loader:
                    optimizer.zero_grad()
                    F.cross_entropy(module(xb), yb).backward()
                    optimizer.step()
                with torch.no_grad():
                    for k, v in net.state_dict().items():
                        total[k] += (v - weights[k]) * len(x)
                examples += len(x)
            weights = {k: weights[k] + total[k] / examples for k in weights}
            steps_done += len(loader)
            accountant.history = [(noise_multiplier, 1 / len(loader), steps_done)]
            epsilon = accountant.get_epsilon(delta=delta)
            net.load_state_dict(weights)
            with torch.no_grad():
                accuracy = float((net(x_test).argmax(1) == y_test).float().mean())
            seconds.append(time.perf_counter() - start)
    return ReferenceRun(round_seconds=tuple(seconds), final_accuracy=accuracy, epsilon=epsilon)
