"""The round primitives every engine shares."""

import numpy as np
import pytest
import torch

from fedguard.fl.loop import WeightedSum, client_generator, sample_cohort
from fedguard.fl.strategies import FedAvgM


def test_cohort_is_seeded_sorted_and_within_range():
    a = sample_cohort(seed=1, server_round=3, num_clients=100, cohort_size=10)
    assert a == sample_cohort(seed=1, server_round=3, num_clients=100, cohort_size=10)
    assert a == sorted(set(a)) and len(a) == 10 and all(0 <= c < 100 for c in a)
    assert a != sample_cohort(seed=1, server_round=4, num_clients=100, cohort_size=10)
    assert sample_cohort(seed=1, server_round=1, num_clients=5, cohort_size=5) == list(range(5))


def test_client_generators_are_independent_streams():
    def draw(**kw):
        return torch.rand(4, generator=client_generator(**kw))

    base = draw(seed=0, server_round=1, client_id=0)
    assert torch.equal(base, draw(seed=0, server_round=1, client_id=0))
    for other in (
        {"seed": 1, "server_round": 1, "client_id": 0},
        {"seed": 0, "server_round": 2, "client_id": 0},
        {"seed": 0, "server_round": 1, "client_id": 1},
    ):
        assert not torch.equal(base, draw(**other))


def test_weighted_sum_is_the_example_weighted_mean():
    total = WeightedSum()
    total.add([np.array([1.0, 0.0]), np.array([[2.0]])], weight=1)
    total.add([np.array([4.0, 3.0]), np.array([[5.0]])], weight=2)
    mean = total.mean()
    np.testing.assert_allclose(mean[0], [3.0, 2.0])
    np.testing.assert_allclose(mean[1], [[4.0]])
    assert total.count == 2
    with pytest.raises(ValueError, match="shape"):
        total.add([np.zeros(3), np.zeros((1, 1))], weight=1)
    with pytest.raises(ValueError, match="weight"):
        total.add([np.zeros(2), np.zeros((1, 1))], weight=0)
    with pytest.raises(ValueError, match="nothing to average"):
        WeightedSum().mean()


def test_fedavgm_is_fedavg_without_momentum_and_accumulates_with_it():
    w = [np.zeros(2, dtype=np.float32)]
    u = [np.ones(2, dtype=np.float32)]
    plain = FedAvgM(server_lr=1.0, server_momentum=0.0)
    np.testing.assert_allclose(plain.apply(weights=w, mean_update=u)[0], [1, 1])
    m = FedAvgM(server_lr=1.0, server_momentum=0.5)
    w1 = m.apply(weights=w, mean_update=u)
    w2 = m.apply(weights=w1, mean_update=u)
    np.testing.assert_allclose(w2[0], [1 + 1.5, 1 + 1.5])
