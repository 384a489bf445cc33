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
"""``iid``: uniform random split; ``dirichlet``: per-class proportions ~ Dir(alpha)
(Hsu et al. 2019); ``shards``: sort by label and deal label-pure shards (McMahan et al.
2017)."""

_DIRICHLET_ATTEMPTS = 100


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
        Fewest examples any client may get.

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
        ``dirichlet`` failed to give every client ``min_size`` examples in 100 draws.
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
        parts = _dirichlet(labels, num_clients, float(alpha), min_size, rng)
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
    labels: np.ndarray, num_clients: int, alpha: float, min_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    concentration = np.full(num_clients, alpha)
    sizes = np.zeros(num_clients, dtype=np.int64)
    for _ in range(_DIRICHLET_ATTEMPTS):
        buckets: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for idx in by_class:
            idx = rng.permutation(idx)
            props = rng.dirichlet(concentration)
            cuts = np.floor(np.cumsum(props)[:-1] * len(idx)).astype(np.int64)
            for bucket, piece in zip(buckets, np.split(idx, cuts), strict=True):
                bucket.append(piece)
        sizes = np.array([sum(len(p) for p in b) for b in buckets])
        if sizes.min() >= min_size:
            return [np.concatenate(b) if b else np.empty(0, np.int64) for b in buckets]
    raise DataError(
        f"partition dirichlet: no draw in {_DIRICHLET_ATTEMPTS} gave every client >= {min_size} "
        f"samples (alpha={alpha}, {num_clients} clients, {len(labels)} samples, smallest "
        f"{int(sizes.min())}); raise --alpha or lower --clients"
    )
