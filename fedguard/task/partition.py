"""Split one data set across simulated clients: IID, Dirichlet label skew, or shards.

All randomness comes from the ``numpy.random.Generator`` passed in, so a partition is a
pure function of (labels, options, generator state).
"""

from __future__ import annotations

import math

import numpy as np

from fedguard.errors import DataError, invalid

__all__ = ["PARTITION_SCHEMES", "partition"]

PARTITION_SCHEMES: tuple[str, ...] = ("iid", "dirichlet", "shards")
"""``iid``: uniform random split; ``dirichlet``: label skew, each class split among
clients by Dir(alpha) weights with every client filled to an equal capacity (Hsu et al.
2019; sizes as even as ``iid``, works for thousands of clients); ``shards``: sort by label
and deal label-pure shards (McMahan et al. 2017)."""


def partition(
    *,
    labels: np.ndarray,
    num_clients: int,
    scheme: str,
    rng: np.random.Generator,
    alpha: float = 0.5,
    shards_per_client: int = 2,
    min_size: int = 2,
) -> list[np.ndarray]:
    """Assign the examples to ``num_clients`` clients.

    Parameters
    ----------
    labels
        1-D integer class ids, one per example.
    num_clients
        Number of clients (>= 1).
    scheme
        One of :data:`PARTITION_SCHEMES`.
    rng
        The only source of randomness.
    alpha
        Dirichlet concentration (> 0); smaller means more label skew.
    shards_per_client
        Shards dealt to each client by ``shards``.
    min_size
        Fewest examples any client may get. ``iid`` and ``dirichlet`` give every client
        ``len(labels) // num_clients`` examples or one more, so they meet it whenever
        ``num_clients * min_size <= len(labels)``, which is checked first.

    Returns
    -------
    list of numpy.ndarray
        ``num_clients`` sorted int64 index arrays; disjoint, and together they cover
        every example exactly once.

    Raises
    ------
    ConfigError
        An option is out of range (the message names the option).
    DataError
        ``labels`` is not a 1-D integer array, or ``shards`` left a client with fewer
        than ``min_size`` examples.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or labels.size == 0):
        raise DataError(
            f"partition: labels must be 1-D integers, got {labels.dtype} {labels.shape}"
        )
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"partition: rng must be a numpy.random.Generator, got {type(rng).__name__}"
        )
    if scheme not in PARTITION_SCHEMES:
        raise invalid("--partition", allowed=PARTITION_SCHEMES, got=scheme)
    if not _is_int(num_clients) or num_clients < 1:
        raise invalid("--clients", allowed="an integer >= 1", got=num_clients)
    if not _is_int(min_size) or min_size < 0:
        raise invalid("min_size", allowed="an integer >= 0", got=min_size)
    n = len(labels)
    if num_clients * min_size > n:
        most = n // min_size
        raise invalid(
            "--clients",
            allowed=f"at most {most} for {n} samples",
            got=num_clients,
            hint=f"each client needs >= {min_size}",
        )
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, int | float | np.floating)
        or not math.isfinite(alpha)
        or alpha <= 0
    ):
        raise invalid("--alpha", allowed="a finite number > 0", got=alpha)
    if not _is_int(shards_per_client) or shards_per_client < 1:
        raise invalid("--shards-per-client", allowed="an integer >= 1", got=shards_per_client)

    if scheme == "iid":
        parts = np.array_split(rng.permutation(n), num_clients)
    elif scheme == "shards":
        parts = _shards(labels, num_clients, shards_per_client, rng)
    else:
        parts = _dirichlet(labels, num_clients, float(alpha), rng)
    out = [np.sort(p).astype(np.int64) for p in parts]
    small = min(len(p) for p in out)
    if small < min_size:  # only reachable with many shards per client on tiny data
        raise DataError(
            f"partition {scheme}: a client got {small} samples, fewer than min_size={min_size} "
            f"({n} samples, {num_clients} clients); lower --clients"
        )
    return out


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _shards(
    labels: np.ndarray, num_clients: int, per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
    n = len(labels)
    num_shards = num_clients * per_client
    if num_shards > n:
        raise invalid(
            "--shards-per-client",
            allowed=f"at most {n // num_clients} for {n} samples and {num_clients} clients",
            got=per_client,
        )
    # Shuffle before the stable sort so ties (same label) land in random shards.
    perm = rng.permutation(n)
    order = perm[np.argsort(labels[perm], kind="stable")]
    shards = np.array_split(order, num_shards)
    deal = rng.permutation(num_shards).reshape(num_clients, per_client)
    return [np.concatenate([shards[s] for s in row]) for row in deal]


def _dirichlet(
    labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Label skew from per-class Dirichlet weights, with every client filled to capacity.

    Each client gets a capacity of ``n // num_clients`` examples, ``+1`` for ``n %
    num_clients`` clients drawn at random, so capacities sum to ``n``. Classes are dealt in a
    random order; class ``c`` is split among clients by weights ``p_c ~ Dir(alpha)``, but a
    client never receives more than its remaining room: what a full client would have got is
    re-dealt among the clients with room, by their own weights (by room when all of those
    weights are 0). This is the capacity trick of the FedLab / NIID-Bench "balanced"
    Dirichlet split, made strict, so it never has to resample: sizes are as even as ``iid``
    (they differ by at most one) and the skew is in the labels only, as in Hsu et al. (2019).
    Each pass either places the whole class or fills at least one client, so a class takes at
    most ``num_clients + 1`` passes, and all classes together at most ``classes +
    num_clients``.
    """
    n = len(labels)
    capacity = np.full(num_clients, n // num_clients, dtype=np.int64)
    capacity[rng.permutation(num_clients)[: n % num_clients]] += 1
    sizes = np.zeros(num_clients, dtype=np.int64)
    owner = np.empty(n, dtype=np.int64)
    clients = np.arange(num_clients)
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for c in rng.permutation(len(by_class)):
        idx = rng.permutation(by_class[c])
        weights = rng.dirichlet(np.full(num_clients, alpha))
        placed = 0
        while placed < len(idx):
            room = capacity - sizes
            open_weights = np.where(room > 0, weights, 0.0)
            if not open_weights.sum() > 0:
                open_weights = room.astype(np.float64)
            take = np.minimum(_largest_remainder(open_weights, len(idx) - placed), room)
            end = placed + int(take.sum())
            owner[idx[placed:end]] = np.repeat(clients, take)
            sizes += take
            placed = end
    order = np.argsort(owner, kind="stable")
    return np.split(order, np.cumsum(sizes)[:-1])


def _largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
    """Integers proportional to ``weights`` that sum to ``total`` (ties go to lower ids)."""
    share = weights / weights.sum() * total
    counts = np.floor(share).astype(np.int64)
    short = total - int(counts.sum())
    if short > 0:
        counts[np.argsort(counts - share, kind="stable")[:short]] += 1
    return counts
