"""Helpers for the SecAgg+ protocol tests: cohort inputs, the plain sums to compare with,
and a round driven stage by stage (the real server and clients, no transport)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np
import pytest

from fedguard.privacy.secagg import (
    SecAggClient,
    SecAggParams,
    SecAggServer,
    SecureSum,
    make_params,
    quantize,
)
from fedguard.privacy.secagg import _hazmat as hz

SHAPES = ((3, 4), (5,))

Inputs = dict[int, tuple[list[np.ndarray], int]]


class Harness:
    """Plain (unmasked) counterparts of a secure round, computed without the protocol."""

    shapes = SHAPES

    @staticmethod
    def params(cohort: int, *, tolerance: float = 1 / 3, ring_bits: int | None = None, **kw):
        args = {
            "run": "test-fed",
            "server_round": 1,
            "cohort": cohort,
            "clip_range": 1.0,
            "bits": 12,
            "weight_cap": 50,
            "dropout_tolerance": tolerance,
            "graph_seed": 99,
        }
        p = make_params(**(args | kw))
        if ring_bits is not None and ring_bits != p.ring_bits:
            p = dataclasses.replace(p, ring_bits=ring_bits)
        return p

    @staticmethod
    def inputs(params: SecAggParams, seed: int, shapes=SHAPES) -> Inputs:
        """Updates partly outside the clipping range; weights partly above the cap."""
        rng = np.random.default_rng([seed, params.cohort])
        scale = 1.5 * params.clip_range
        inputs = {
            slot: (
                [rng.uniform(-scale, scale, size=s).astype(np.float32) for s in shapes],
                int(rng.integers(1, 2 * params.weight_cap)),
            )
            for slot in range(1, params.cohort + 1)
        }
        inputs[1] = (inputs[1][0], 3 * params.weight_cap)  # above the cap
        return inputs

    @staticmethod
    def capped(params: SecAggParams, weight: int) -> int:
        return min(max(weight, 1), params.weight_cap)

    @staticmethod
    def quantized(
        params: SecAggParams, inputs: Inputs, slots: Iterable[int], rng_seed: int
    ) -> dict[int, np.ndarray]:
        """Each node's encoded vector: one generator consumed in slot order, as the round."""
        rng = np.random.default_rng(rng_seed)
        return {
            slot: quantize(
                inputs[slot][0],
                weight=Harness.capped(params, inputs[slot][1]),
                clip_range=params.clip_range,
                bits=params.bits,
                dtype=params.dtype,
                rng=rng,
            ).vector
            for slot in sorted(slots)
        }

    @staticmethod
    def plain_total(
        params: SecAggParams, inputs: Inputs, slots: Iterable[int], rng_seed: int
    ) -> list[int]:
        """The exact integer sum mod 2**ring_bits, in Python integers."""
        vectors = Harness.quantized(params, inputs, slots, rng_seed).values()
        modulus = 2**params.ring_bits
        return [sum(int(v) for v in column) % modulus for column in zip(*vectors, strict=True)]

    @staticmethod
    def fedavg(params: SecAggParams, inputs: Inputs, slots: Iterable[int]) -> np.ndarray:
        """Plain FedAvg of the clipped updates, weighted by capped example counts."""
        c = params.clip_range
        num, den = 0.0, 0
        for slot in slots:
            update, weight = inputs[slot]
            w = Harness.capped(params, weight)
            flat = np.concatenate([np.asarray(u, dtype=np.float64).ravel() for u in update])
            num = num + w * np.clip(flat, -c, c)
            den += w
        return num / den


def named(params: SecAggParams) -> SecAggParams:
    """``params`` with node names by slot (``node-1``...), when it has none."""
    if params.names:
        return params
    return dataclasses.replace(
        params, names=tuple(f"node-{s}" for s in range(1, params.cohort + 1))
    )


class HandRound:
    """One round with the real :class:`SecAggServer` and :class:`SecAggClient`, stage by
    stage, so a test can leave out (drop) any node at any stage. Each node has its own
    P-384 signing key; ``roster`` holds every node's public key by name."""

    def __init__(
        self,
        params: SecAggParams,
        *,
        min_holders: dict[int, int] | None = None,
        max_colluding: int = 0,
    ):
        params = named(params)
        if max_colluding:  # the session carries c, so every node counts the same quorum
            params = dataclasses.replace(params, max_colluding=max_colluding)
        self.params = params
        self.server = SecAggServer(params)
        self.keys = {name: hz.new_signing_key() for name in params.names}
        self.roster = {name: key.public_key() for name, key in self.keys.items()}
        self.clients = {
            s: SecAggClient.create(
                params=params,
                slot=s,
                signing_key=self.keys[params.names[s - 1]],
                roster=self.roster,
                min_holders=(min_holders or {}).get(s, 0),
                max_colluding=max_colluding,
            )
            for s in range(1, params.cohort + 1)
        }
        self.share_requests: dict = {}
        self.mask_requests: dict = {}
        self.unmask_requests: dict = {}
        self.masked_slots: list[int] = []
        self.seen: list[tuple[str, int, object]] = []  # every message the server sees

    def _up(self, message):
        self.seen.append(("up", message.slot, message))
        return message

    def _down(self, requests: dict) -> dict:
        self.seen.extend(("down", slot, m) for slot, m in requests.items())
        return requests

    def advertise(self, skip: Iterable[int] = ()) -> dict:
        skip = set(skip)
        adverts = [self._up(c.advertise()) for s, c in self.clients.items() if s not in skip]
        self.share_requests = self._down(self.server.receive_keys(adverts))
        return self.share_requests

    def share(self, skip: Iterable[int] = ()) -> dict:
        skip = set(skip)
        replies = [
            self._up(self.clients[s].share_keys(r))
            for s, r in self.share_requests.items()
            if s not in skip
        ]
        self.mask_requests = self._down(self.server.receive_shares(replies))
        return self.mask_requests

    def mask(self, inputs: Inputs, rng_seed: int, skip: Iterable[int] = ()) -> None:
        skip, rng = set(skip), np.random.default_rng(rng_seed)
        for slot, request in sorted(self.mask_requests.items()):
            if slot in skip:
                continue
            update, weight = inputs[slot]
            reply = self.clients[slot].masked_input(request, update=update, weight=weight, rng=rng)
            self.server.add_masked_input(self._up(reply))
            self.masked_slots.append(slot)

    def consistency(self, skip: Iterable[int] = ()) -> dict:
        skip = set(skip)
        requests = self._down(self.server.consistency_requests())
        replies = [
            self._up(self.clients[s].consistency(r)) for s, r in requests.items() if s not in skip
        ]
        self.unmask_requests = self._down(self.server.receive_consistency(replies))
        return self.unmask_requests

    def unmask(self, skip: Iterable[int] = ()) -> SecureSum:
        if not self.unmask_requests:
            self.consistency()
        skip = set(skip)
        replies = [
            self._up(self.clients[s].unmask(r))
            for s, r in self.unmask_requests.items()
            if s not in skip
        ]
        return self.server.receive_unmask(replies)


@pytest.fixture
def harness() -> type[Harness]:
    return Harness


@pytest.fixture
def hand_round() -> type[HandRound]:
    return HandRound
