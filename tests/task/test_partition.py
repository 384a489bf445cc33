"""Client partitions: coverage, determinism, label skew, and option errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedguard.errors import ConfigError, DataError
from fedguard.task.partition import PARTITION_SCHEMES, partition

LABELS = np.repeat(np.arange(10), 100)  # 1000 examples, 10 balanced classes


def _split(scheme: str, seed: int, **kwargs: object) -> list[np.ndarray]:
    opts: dict[str, object] = {"labels": LABELS, "num_clients": 10, **kwargs}
    return partition(scheme=scheme, rng=np.random.default_rng(seed), **opts)  # type: ignore[arg-type]


def _dominant_share(parts: list[np.ndarray]) -> float:
    """Mean over clients of the share of its examples in its most common class."""
    return float(np.mean([np.bincount(LABELS[p]).max() / len(p) for p in parts]))


@pytest.mark.parametrize("scheme", PARTITION_SCHEMES)
def test_disjoint_sorted_cover_everything(scheme: str) -> None:
    parts = _split(scheme, 0)
    assert len(parts) == 10
    for p in parts:
        assert p.dtype == np.int64 and np.all(np.diff(p) > 0)
    together = np.concatenate(parts)
    np.testing.assert_array_equal(np.sort(together), np.arange(len(LABELS)))


@pytest.mark.parametrize("scheme", PARTITION_SCHEMES)
def test_deterministic_for_a_seed_and_different_for_another(scheme: str) -> None:
    a, b, c = _split(scheme, 7), _split(scheme, 7), _split(scheme, 8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize("scheme", PARTITION_SCHEMES)
def test_never_touches_the_global_numpy_rng(scheme: str) -> None:
    np.random.seed(123)
    expected = np.random.random()
    np.random.seed(123)
    _split(scheme, 0)
    assert np.random.random() == expected  # the global stream was not advanced


def test_iid_is_balanced_and_mixed() -> None:
    parts = _split("iid", 0)
    assert {len(p) for p in parts} == {100}
    assert _dominant_share(parts) < 0.3  # expected ~0.17 for 10 classes of 100


def test_small_alpha_dirichlet_is_strongly_skewed() -> None:
    skewed = _dominant_share(_split("dirichlet", 0, alpha=0.05))
    mild = _dominant_share(_split("dirichlet", 0, alpha=100.0))
    iid = _dominant_share(_split("iid", 0))
    assert skewed > 0.6 > 0.3 > max(mild, iid)


def test_shards_give_each_client_few_labels() -> None:
    # 10 shards of 100 on label-sorted data: every shard holds exactly one label.
    parts = _split("shards", 0, num_clients=5, shards_per_client=2)
    assert all(len(np.unique(LABELS[p])) <= 2 for p in parts)
    assert {len(p) for p in parts} == {200}


def test_dirichlet_honours_min_size() -> None:
    # A single unconstrained Dir(0.5) draw meets min_size=25 for 20 clients only ~11% of
    # the time; filling clients to capacity meets it on the first draw.
    parts = _split("dirichlet", 3, num_clients=20, alpha=0.5, min_size=25)
    assert min(len(p) for p in parts) >= 25


def test_dirichlet_works_where_resampling_gave_up() -> None:
    # 100 clients, 200 examples of 2 classes, alpha=0.001: no unconstrained draw gives
    # every client 2 examples; the capacity split gives each exactly 2, mostly one label.
    labels = np.repeat(np.arange(2), 100)
    parts = partition(
        labels=labels,
        num_clients=100,
        scheme="dirichlet",
        rng=np.random.default_rng(0),
        alpha=0.001,
    )
    assert {len(p) for p in parts} == {2}
    assert np.mean([len(np.unique(labels[p])) == 1 for p in parts]) > 0.9


# 1000 clients with ~50 examples each (issue #5): far more clients than digits can feed.
BIG = np.random.default_rng(42).integers(0, 10, size=50_000)


def _big_split(alpha: float, seed: int) -> list[np.ndarray]:
    return partition(
        labels=BIG,
        num_clients=1000,
        scheme="dirichlet",
        rng=np.random.default_rng(seed),
        alpha=alpha,
    )


def _big_dominant_share(parts: list[np.ndarray]) -> float:
    return float(np.mean([np.bincount(BIG[p]).max() / len(p) for p in parts]))


def test_dirichlet_1000_clients_of_50() -> None:
    for alpha in (0.01, 0.1, 0.5, 100.0):
        parts = _big_split(alpha, 0)
        assert len(parts) == 1000 and {len(p) for p in parts} == {50}
        np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(BIG)))


def test_dirichlet_1000_clients_keeps_the_label_skew() -> None:
    shares = [_big_dominant_share(_big_split(alpha, 1)) for alpha in (0.01, 0.1, 1.0, 100.0)]
    assert shares == sorted(shares, reverse=True)  # smaller alpha: more skew
    assert shares[0] > 0.9 and shares[1] > 0.6 and shares[-1] < 0.25
    # Not just balanced classes dealt out: a client's label mix differs from the global one.
    iid = partition(labels=BIG, num_clients=1000, scheme="iid", rng=np.random.default_rng(1))
    assert shares[1] > 2 * _big_dominant_share(iid)


def test_dirichlet_1000_clients_is_deterministic() -> None:
    a, b, c = _big_split(0.5, 5), _big_split(0.5, 5), _big_split(0.5, 6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


@settings(max_examples=25, deadline=None)
@given(
    class_weights=st.lists(st.floats(0.01, 1.0), min_size=1, max_size=12),
    per_client=st.integers(1, 60),
    extra=st.integers(0, 999),
    num_clients=st.sampled_from([1, 7, 100, 1000]),
    alpha=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**32 - 1),
)
def test_dirichlet_sizes_are_balanced_for_any_labels(
    class_weights: list[float],
    per_client: int,
    extra: int,
    num_clients: int,
    alpha: float,
    seed: int,
) -> None:
    n = num_clients * per_client + extra % num_clients
    probs = np.array(class_weights) / sum(class_weights)
    labels = np.random.default_rng(seed).choice(len(probs), size=n, p=probs)
    parts = partition(
        labels=labels,
        num_clients=num_clients,
        scheme="dirichlet",
        rng=np.random.default_rng(seed),
        alpha=alpha,
        min_size=1,
    )
    sizes = [len(p) for p in parts]
    assert len(parts) == num_clients
    assert set(sizes) <= {n // num_clients, n // num_clients + 1} and min(sizes) >= 1
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(n))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scheme": "zipf"}, "--partition: expected one of iid, dirichlet, shards, got 'zipf'"),
        ({"num_clients": 0}, "--clients: expected an integer >= 1, got 0"),
        ({"num_clients": True}, "--clients: expected an integer >= 1, got True"),
        (
            {"num_clients": 501},
            "--clients: expected at most 500 for 1000 samples, got 501 (each client needs >= 2)",
        ),
        ({"alpha": 0.0}, "--alpha: expected a finite number > 0, got 0.0"),
        ({"alpha": float("nan")}, "--alpha: expected a finite number > 0, got nan"),
        ({"alpha": float("inf")}, "--alpha: expected a finite number > 0, got inf"),
        ({"shards_per_client": 0}, "--shards-per-client: expected an integer >= 1, got 0"),
    ],
)
def test_bad_options_name_the_option_and_value(kwargs: dict[str, object], message: str) -> None:
    opts: dict[str, object] = {"scheme": "iid", **kwargs}
    scheme = str(opts.pop("scheme"))
    with pytest.raises(ConfigError) as info:
        _split(scheme, 0, **opts)
    assert str(info.value) == message


def test_too_many_shards_for_the_data() -> None:
    with pytest.raises(ConfigError, match=r"^--shards-per-client: expected at most 2 for 10 "):
        partition(
            labels=np.arange(10) % 2,
            num_clients=5,
            scheme="shards",
            rng=np.random.default_rng(0),
            shards_per_client=3,
            min_size=1,
        )


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.integers(0, 9), min_size=1, max_size=300),
    num_clients=st.integers(1, 20),
    scheme=st.sampled_from(["iid", "shards"]),
    shards_per_client=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_iid_and_shards_cover_every_example_once(
    labels: list[int], num_clients: int, scheme: str, shards_per_client: int, seed: int
) -> None:
    y = np.array(labels, dtype=np.int64)
    if num_clients * (shards_per_client if scheme == "shards" else 1) > len(y):
        with pytest.raises(ConfigError):
            partition(
                labels=y,
                num_clients=num_clients,
                scheme=scheme,
                rng=np.random.default_rng(seed),
                shards_per_client=shards_per_client,
                min_size=1,
            )
        return
    parts = partition(
        labels=y,
        num_clients=num_clients,
        scheme=scheme,
        rng=np.random.default_rng(seed),
        shards_per_client=shards_per_client,
        min_size=1,
    )
    assert len(parts) == num_clients and min(len(p) for p in parts) >= 1
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(y)))
    sizes = [len(p) for p in parts]
    if scheme == "iid":
        assert max(sizes) - min(sizes) <= 1


def test_labels_must_be_1d_integers() -> None:
    with pytest.raises(DataError, match=r"^partition: labels must be 1-D integers"):
        partition(
            labels=np.zeros((4, 2), dtype=np.int64),
            num_clients=2,
            scheme="dirichlet",
            rng=np.random.default_rng(0),
        )
