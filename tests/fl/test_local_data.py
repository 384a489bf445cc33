"""LocalTrainer.run(data=...): a node's round from a map-style data set (#16.4) trains, counts
and saves exactly what the same round from tensors does, reading only sampled records."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedguard.fl.local import LocalTrainer, PrivacyBudget
from fedguard.fl.loop import TrainRequest
from fedguard.privacy import AccountantStore
from fedguard.task import get_weights

pytestmark = pytest.mark.filterwarnings(
    "ignore:Full backward hook is firing:UserWarning",
    "ignore:Optimal order is the:UserWarning",
)


class Reads(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y
        self.read: list[int] = []

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        self.read.append(i)
        return self.x[i], int(self.y[i])


def _round(tmp_path, *, dp: bool, **source) -> tuple[list[np.ndarray], object]:
    torch.manual_seed(0)  # only the initial weights
    model = nn.Linear(4, 2)
    trainer = LocalTrainer(model=model, dp=dp)
    request = TrainRequest(server_round=1, local_epochs=2, batch_size=10, lr=0.2, momentum=0.3)
    kw = {}
    if dp:
        kw = {
            "budget": PrivacyBudget(
                target_epsilon=3.0, delta=1e-5, accountant="rdp", planned_rounds=2
            ),
            "store": AccountantStore(path=tmp_path / f"acct-{len(source)}.json"),
        }
    result = trainer.run(
        global_weights=get_weights(model),
        request=request,
        generator=torch.Generator().manual_seed(7),
        **source,
        **kw,
    )
    return result.weights, result


@pytest.mark.parametrize("dp", [True, False])
def test_a_round_from_a_data_set_equals_the_round_from_tensors(tmp_path, dp):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(120, 4, generator=g), torch.randint(0, 2, (120,), generator=g)
    want_w, want = _round(tmp_path / "t", dp=dp, x=x, y=y)
    data = Reads(x, y)
    got_w, got = _round(tmp_path / "d", dp=dp, data=data)
    assert all(np.array_equal(a, b) for a, b in zip(got_w, want_w, strict=True))
    assert (got.num_examples, got.steps, got.epsilon, got.noise_multiplier) == (
        want.num_examples,
        want.steps,
        want.epsilon,
        want.noise_multiplier,
    )
    if dp:
        assert got.epsilon is not None and got.epsilon > 0
        assert (tmp_path / "d" / "acct-1.json").exists()  # write-ahead, as from tensors
        assert 0 < len(set(data.read)) < len(x)  # Poisson: not every record in 2 epochs
    else:
        assert sorted(data.read) == sorted(list(range(len(x))) * 2)  # shuffled epochs
