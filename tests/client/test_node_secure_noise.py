"""A deployed node draws its DP-SGD noise with Opacus's floating-point defence (#13.7).

Simulation keeps it off (reproducible, and the vectorised trainer must draw the same
numbers); a node's noise must not be the single floats of one Gaussian draw each, which
is what the floating-point attacks (Mironov 2012; Jin et al. 2022) read back.
"""

from __future__ import annotations

import math
from pathlib import Path

import opacus.optimizers.optimizer as plain_opt
import opacus.optimizers.optimizer_fast_gradient_clipping as fast_opt
import pytest
import torch
from harness.federation_files import write_federation

from fedguard.client.node import node_runtime
from fedguard.fl.loop import TrainRequest
from fedguard.task import build_model, get_weights

WEIGHTS = get_weights(build_model(name="logreg", input_shape=(1, 8, 8), num_classes=10))


def test_a_deployed_nodes_training_noise_is_drawn_in_secure_mode(tmp_path: Path, monkeypatch):
    calls: list[tuple[bool, float, torch.Tensor]] = []
    real = plain_opt._generate_noise

    def spy(std, reference, generator=None, secure_mode=False):
        noise = real(std, reference, generator=generator, secure_mode=secure_mode)
        calls.append((secure_mode, std, noise.detach().clone()))
        return noise

    monkeypatch.setattr(plain_opt, "_generate_noise", spy)
    monkeypatch.setattr(fast_opt, "_generate_noise", spy)
    layout = write_federation(out=tmp_path / "demo", nodes=2, rounds=3)
    node_runtime.cache_clear()
    runtime = node_runtime(str(layout.nodes[0]))
    request = TrainRequest(
        server_round=1,
        local_epochs=3,
        batch_size=32,
        lr=0.1,
        max_grad_norm=0.5,
        total_rounds=3,
        federation="demo",
        model="logreg",
        run_id="secure-noise",
    )
    result = runtime.train(model_name="logreg", weights=WEIGHTS, request=request)
    assert calls, "the node trained without drawing DP noise"
    assert all(secure for secure, _, _ in calls)
    sigma = result.noise_multiplier
    assert sigma is not None and sigma > 0
    assert all(std == pytest.approx(sigma * 0.5) for _, std, _ in calls)
    noise = torch.cat([n.reshape(-1) for _, _, n in calls]).double()
    # Thousands of draws (650 parameters a step): sample std within a few percent.
    assert noise.numel() > 5_000
    assert noise.std().item() == pytest.approx(sigma * 0.5, rel=0.05)
    assert abs(noise.mean().item()) < 5 * sigma * 0.5 / math.sqrt(noise.numel())
