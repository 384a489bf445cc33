"""Shamir t-of-n sharing: properties against a slow Lagrange oracle (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedguard.privacy.secagg import SecAggError, shamir

PRIME = 2**521 - 1
FAST = settings(max_examples=60, deadline=None)


def lagrange_at_zero(points: dict[int, int]) -> int:
    """The interpolating polynomial's value at 0, written the slow, obvious way."""
    total = 0
    for xi, yi in points.items():
        term = yi
        for xj in points:
            if xj != xi:
                # x_j / (x_j - x_i), the inverse by Fermat's little theorem
                term = term * xj % PRIME * pow((xj - xi) % PRIME, PRIME - 2, PRIME) % PRIME
        total = (total + term) % PRIME
    return total


@st.composite
def sharings(draw, min_threshold: int = 1):
    n = draw(st.integers(min_value=max(1, min_threshold), max_value=10))
    t = draw(st.integers(min_value=min_threshold, max_value=n))
    holders = draw(
        st.lists(st.integers(min_value=1, max_value=2**64), min_size=n, max_size=n, unique=True)
    )
    secret = draw(st.binary(min_size=32, max_size=32))
    return secret, t, holders, shamir.split(secret, threshold=t, holders=holders)


@FAST
@given(sharing=sharings(), data=st.data())
def test_any_t_or_more_shares_in_any_order_recover_the_secret(sharing, data):
    secret, t, holders, shares = sharing
    assert sorted(shares) == sorted(holders)
    assert all(len(s) == shamir.SHARE_BYTES for s in shares.values())
    size = data.draw(st.integers(min_value=t, max_value=len(holders)))
    chosen = data.draw(st.permutations(holders))[:size]
    subset = {x: shares[x] for x in chosen}  # insertion order is the drawn order
    assert shamir.combine(subset, threshold=t) == secret
    points = {x: int.from_bytes(shares[x], "big") for x in chosen[:t]}
    assert lagrange_at_zero(points).to_bytes(32, "big") == secret


@FAST
@given(sharing=sharings(min_threshold=2), data=st.data())
def test_fewer_than_t_shares_do_not_give_the_secret(sharing, data):
    secret, t, holders, shares = sharing
    chosen = data.draw(st.permutations(holders))[: t - 1]
    subset = {x: shares[x] for x in chosen}
    with pytest.raises(SecAggError, match="not enough shares"):
        shamir.combine(subset, threshold=t)
    # Interpolating t - 1 points as if the threshold were t - 1: noise, not the secret.
    try:
        guess = shamir.combine(subset, threshold=t - 1)
    except SecAggError:
        return
    assert guess != secret


@FAST
@given(sharing=sharings(), data=st.data())
def test_a_tampered_share_is_detected_or_gives_a_wrong_secret(sharing, data):
    secret, t, holders, shares = sharing
    chosen = sorted(data.draw(st.permutations(holders))[:t])  # combine uses these t
    victim = data.draw(st.sampled_from(chosen))
    delta = data.draw(st.integers(min_value=1, max_value=PRIME - 1))
    y = (int.from_bytes(shares[victim], "big") + delta) % PRIME
    subset = {x: shares[x] for x in chosen}
    subset[victim] = y.to_bytes(shamir.SHARE_BYTES, "big")
    try:
        got = shamir.combine(subset, threshold=t)
    except SecAggError as exc:
        assert "inconsistent" in str(exc)
        return
    assert got != secret
    points = {x: int.from_bytes(subset[x], "big") for x in chosen}
    assert got == lagrange_at_zero(points).to_bytes(32, "big")


@FAST
@given(sharing=sharings(), data=st.data())
def test_malformed_shares_raise(sharing, data):
    _, t, _, shares = sharing
    victim = data.draw(st.sampled_from(sorted(shares)[:t]))
    for bad in (
        shares[victim][:-1],  # short
        shares[victim] + b"\x00",  # long
        PRIME.to_bytes(shamir.SHARE_BYTES, "big"),  # outside the field
        (2**528 - 1).to_bytes(shamir.SHARE_BYTES, "big"),
    ):
        subset = dict(shares)
        subset[victim] = bad
        with pytest.raises(SecAggError):
            shamir.combine(subset, threshold=t)


def test_split_and_combine_reject_bad_arguments():
    secret = bytes(range(32))
    for kwargs in (
        {"threshold": 0, "holders": [1, 2]},
        {"threshold": 3, "holders": [1, 2]},
        {"threshold": 2, "holders": [1, 1, 2]},
        {"threshold": 2, "holders": [0, 1, 2]},
        {"threshold": 2, "holders": [1, PRIME]},
    ):
        with pytest.raises(SecAggError):
            shamir.split(secret, **kwargs)
    for bad_secret in (b"", bytes(31), bytes(33)):
        with pytest.raises(SecAggError, match="32 bytes"):
            shamir.split(bad_secret, threshold=1, holders=[1])
    with pytest.raises(SecAggError):
        shamir._split_from_parts(secret, threshold=2, holders=[1, 2], coefficients=[])
    shares = shamir.split(secret, threshold=2, holders=[1, 2, 3])
    with pytest.raises(SecAggError):
        shamir.combine(shares, threshold=0)
    with pytest.raises(SecAggError, match="coordinates"):
        shamir.combine({0: shares[1], 2: shares[2]}, threshold=2)


def test_threshold_one_shares_are_the_secret_and_split_is_random():
    secret = bytes(range(32))
    shares = shamir.split(secret, threshold=1, holders=[1, 2, 3])
    assert {int.from_bytes(s, "big") for s in shares.values()} == {int.from_bytes(secret, "big")}
    a = shamir.split(secret, threshold=2, holders=[1, 2])
    b = shamir.split(secret, threshold=2, holders=[1, 2])
    assert a != b  # fresh coefficients each time (probability 2**-521 of a repeat)
