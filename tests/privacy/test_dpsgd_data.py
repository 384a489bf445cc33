"""DPTrainer on a map-style data set (#16.4): the same training as the tensors, reading only
the records each step sampled, and each record still one training example."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from fedguard.errors import ConfigError, DataError
from fedguard.privacy import Accountant, DPTrainer, GaussianEvent

pytestmark = pytest.mark.filterwarnings(
    "ignore:Full backward hook is firing:UserWarning",
    "ignore:Optimal order is the:UserWarning",
)

DELTA = 1e-5


def _data(seed: int, n: int = 200, d: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, generator=g)
    return x, (x @ w > 0).long()


def _model(seed: int = 0, d: int = 5) -> nn.Module:
    torch.manual_seed(seed)  # only to build identical initial weights in tests
    return nn.Linear(d, 2)


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


class ByIndex(torch.utils.data.Dataset):
    """Only ``__getitem__``: the fallback, one read per index. Records every read."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y
        self.reads: list[list[int]] = []
        self.threads: set[str] = set()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        self.reads.append([i])
        self.threads.add(threading.current_thread().name)
        return self.x[i], int(self.y[i])


class Items(ByIndex):
    """torch's ``__getitems__``: a list of records per batch."""

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        raise AssertionError("read one by one although __getitems__ is offered")

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        self.reads.append(list(indices))
        self.threads.add(threading.current_thread().name)
        return [(self.x[i], int(self.y[i])) for i in indices]


class Fetch(Items):
    """fedguard's ``fetch``: one batch ``(x, y)``."""

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        raise AssertionError("__getitems__ used although fetch is offered")

    def fetch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        self.reads.append(list(indices))
        self.threads.add(threading.current_thread().name)
        return self.x[indices], self.y[indices]


def _train(
    *, seed: int = 3, secure_mode: bool = False, **source
) -> tuple[torch.Tensor, object, Accountant]:
    trainer = DPTrainer(model=_model(1), secure_mode=secure_mode)
    acc = Accountant(method="rdp")
    result = trainer.train(
        **source,
        epochs=2,
        batch_size=20,
        lr=0.5,
        momentum=0.5,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        accountant=acc,
        generator=torch.Generator().manual_seed(seed),
        class_weights=[1.0, 0.5],
    )
    return _flat(trainer.module), result, acc


@pytest.mark.parametrize(
    ("kind", "secure_mode"),
    [(ByIndex, False), (Items, False), (Fetch, False), (Fetch, True)],
)
def test_a_data_set_of_the_tensors_trains_the_same_weights_bit_for_bit(kind, secure_mode):
    x, y = _data(0)
    want, want_result, want_acc = _train(x=x, y=y, secure_mode=secure_mode)
    got, got_result, got_acc = _train(data=kind(x, y), secure_mode=secure_mode)
    assert torch.equal(got, want)
    assert got_result == want_result
    assert got_acc.get_privacy_spent(delta=DELTA) == want_acc.get_privacy_spent(delta=DELTA)


@pytest.mark.parametrize("read_ahead", [False, True])
@pytest.mark.parametrize("kind", [ByIndex, Fetch])
def test_only_the_sampled_records_are_read(kind, read_ahead):
    x, y = _data(1, n=500)
    data = kind(x, y)
    trainer = DPTrainer(model=_model(1))
    result = trainer.train(
        data=data,
        read_ahead=read_ahead,
        epochs=1,
        batch_size=5,  # q = 1/100: 100 steps of ~5 records
        lr=0.1,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        accountant=Accountant(method="rdp"),
        generator=torch.Generator().manual_seed(4),
    )
    assert result.steps == 100 and result.sample_rate == pytest.approx(0.01)
    read = [i for batch in data.reads for i in batch]
    # Every record read was trained on once, nothing more: the examples DP-SGD counted.
    assert len(read) == result.examples
    if kind is Fetch:
        assert all(b == sorted(set(b)) and b for b in data.reads)  # one read per step
        assert len(data.reads) <= result.steps
    # Never the whole set: ~1/e of the records are never sampled in one epoch.
    assert 0.2 * len(x) < len(x) - len(set(read)) < 0.5 * len(x)
    assert (any(t.startswith("fedguard-read") for t in data.threads)) == read_ahead


def test_read_ahead_is_reproducible_and_accounts_the_same():
    x, y = _data(2)
    first, result, acc = _train(data=Fetch(x, y), read_ahead=True)
    again, _, _ = _train(data=Fetch(x, y), read_ahead=True)
    plain, plain_result, plain_acc = _train(x=x, y=y)
    assert torch.equal(first, again)
    # The next sample is drawn before this step's noise: other draws, same release.
    assert not torch.equal(first, plain)
    assert (result.steps, result.sample_rate) == (plain_result.steps, plain_result.sample_rate)
    assert acc.get_privacy_spent(delta=DELTA) == plain_acc.get_privacy_spent(delta=DELTA)


def test_write_ahead_happens_before_the_first_read():
    x, y = _data(3)
    data = Fetch(x, y)
    seen: list[int] = []

    def before(event: GaussianEvent) -> None:
        seen.append(len(data.reads))
        raise OSError("disk full")

    trainer = DPTrainer(model=_model(1))
    with pytest.raises(OSError):
        trainer.train(
            data=data,
            read_ahead=True,
            epochs=1,
            batch_size=20,
            lr=0.1,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            accountant=Accountant(method="rdp"),
            generator=torch.Generator().manual_seed(0),
            before_training=before,
        )
    assert seen == [0] and data.reads == []


class Broken(Fetch):
    def fetch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[indices], self.y[indices][:-1]


@pytest.mark.parametrize("read_ahead", [False, True])
def test_a_data_set_returning_the_wrong_batch_is_named(read_ahead):
    x, y = _data(4)
    with pytest.raises(DataError, match=r"^Broken: expected x \[\d+, \.\.\.\] and y"):
        DPTrainer(model=_model(1)).train(
            data=Broken(x, y),
            read_ahead=read_ahead,
            epochs=1,
            batch_size=20,
            lr=0.1,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            accountant=Accountant(method="rdp"),
            generator=torch.Generator().manual_seed(0),
        )


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (object(), "^data: expected a map-style data set .*, got 'object'$"),
        (Fetch(torch.empty(0, 5), torch.empty(0)), "^data: expected a data set with at least 1"),
    ],
)
def test_not_a_data_set_is_refused(data, match):
    with pytest.raises(ConfigError, match=match):
        DPTrainer(model=_model(1)).train(
            data=data,
            epochs=1,
            batch_size=20,
            lr=0.1,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            accountant=Accountant(method="rdp"),
            generator=torch.Generator().manual_seed(0),
        )


def test_tensors_and_a_data_set_together_are_refused():
    x, y = _data(6)
    with pytest.raises(ValueError, match="not both"):
        _train(x=x, y=y, data=Fetch(x, y))
