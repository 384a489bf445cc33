"""Red team (#18): every client's noise multiplier is still checked, one by one.

``ChunkPlan.of`` now checks each *distinct* value once (``set(noise)``). ``True == 1.0``
and ``hash(True) == hash(1.0)``, so a bool after a 1.0 falls into the 1.0's slot and is
never checked: ``True`` trains as noise 1.0, which ``fedguard._checks.real`` exists to
refuse ("True must not pass ... for a noise multiplier of 1.0"). The same clients in
the other order are refused, so the verdict depends on cohort order.
"""

from __future__ import annotations

import pytest
import torch

from fedguard.errors import ConfigError
from fedguard.privacy import Accountant
from fedguard.privacy.cohort import CohortClient, CohortDPTrainer
from fedguard.task import build_model, get_weights


def _train(noises: list[object]) -> list[object]:
    model = build_model(
        name="mlp",
        input_shape=(1, 8, 8),
        num_classes=10,
        generator=torch.Generator().manual_seed(1),
        hidden=16,
    )
    gen = torch.Generator().manual_seed(7)
    clients = [
        CohortClient(
            x=torch.randn(10, 1, 8, 8, generator=gen),
            y=torch.randint(0, 10, (10,), generator=gen),
            noise_multiplier=sigma,  # type: ignore[arg-type]  # the attack
            generator=torch.Generator().manual_seed(100 + i),
            accountant=Accountant(method="rdp"),
        )
        for i, sigma in enumerate(noises)
    ]
    trainer = CohortDPTrainer(model=model)
    return list(
        trainer.train(
            start=get_weights(model),
            clients=clients,
            epochs=1,
            batch_size=4,
            lr=0.1,
            max_grad_norm=1.0,
        )
    )


@pytest.mark.parametrize("noises", [[True, 1.0], [1.0, True]])
def test_a_bool_noise_multiplier_is_refused_wherever_it_stands(noises: list[object]) -> None:
    with pytest.raises(ConfigError, match="noise_multiplier"):
        _train(noises)
