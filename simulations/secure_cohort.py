"""Secure rounds of the in-process engine: SecAgg+ with every party in this process.

``--secagg-protocol sum`` (the default) computes the exact secure sum without expanding
masks (:mod:`fedguard.privacy.secagg.maskfree`, bit-identical to the protocol);
``full`` runs every stage (:func:`fedguard.privacy.secagg.secure_sum_in_process`). The
cohort trains batched where the model allows (the :class:`Vectorised` trainer, fed to
the sum in slot order as it yields), else one client at a time, the next while one is
masked.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from fedguard.config import SimulationConfig
from fedguard.fl.loop import ClientUpdate, PartialSum, Refusal, SecureMean
from fedguard.fl.seeds import Stream, stream_rng
from fedguard.privacy.client_dp import ClientDP, clip_and_noise
from fedguard.privacy.secagg import (
    SecAggAbortedError,
    SecAggParams,
    SecAggSettings,
    dequantize_mean,
    secure_sum_in_process,
    secure_sum_without_masks,
)

if TYPE_CHECKING:  # the trainers this one drives (cohort_trainers imports this module)
    from fedguard.simulations.cohort_trainers import OneAtATime, Vectorised

__all__ = ["SecureCohort", "secagg_settings"]

_log = logging.getLogger(__name__)

Reply = ClientUpdate | Refusal | SecureMean | PartialSum  # a summed trainer's; refused here


def secagg_settings(config: SimulationConfig) -> SecAggSettings:
    """The simulation's SecAgg+ settings (the deployment's: ``deploy_parts.secagg_settings``)."""
    return SecAggSettings(
        run="simulation",
        clip_range=config.secagg_clip_range,
        bits=config.secagg_bits,
        dropout_tolerance=config.secagg_dropout_tolerance,
        graph_seed=config.seed,
        equal_weights=config.client_dp,
    )


class SecureCohort:
    """Each round under SecAgg+, every party in this process.

    ``--secagg-protocol sum`` (the default) computes the secure sum without expanding
    masks, bit-identical to ``full``, which runs every stage (keys, shares, masks,
    signatures) to study the protocol. Models the vectorised engine trains are trained
    as one batched cohort in both, and fed to the sum in slot order as they come (one
    chunk of clients in memory); other models train one client at a time, the next while
    one is masked.
    """

    def __init__(
        self, *, one: OneAtATime, batched: Vectorised | None, config: SimulationConfig
    ) -> None:
        self.one, self.batched, self.config = one, batched, config
        self.settings = secagg_settings(config)
        self.secure_sum = (
            secure_sum_in_process if config.secagg_protocol == "full" else secure_sum_without_masks
        )

    def params(self, server_round: int, cohort: Sequence[int]) -> SecAggParams:
        # The simulator knows every count: the cap is the cohort's largest, i.e. none.
        sizes = self.one.clients
        return self.settings.for_round(
            server_round=server_round,
            cohort=len(cohort),
            weight_cap=max(sizes.size(c) for c in cohort),
        )

    def __call__(
        self, server_round: int, cohort: list[int], global_weights: list[np.ndarray]
    ) -> Iterator[Reply]:
        params = self.params(server_round, cohort)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="train") as pool:
            inputs: _Inputs
            if self.batched is not None:
                replies = self.batched(server_round, cohort, global_weights)
                inputs = _BatchedInputs(
                    secure=self,
                    params=params,
                    cohort=cohort,
                    weights=global_weights,
                    replies=replies,
                )
            else:
                inputs = _MaskedInputs(
                    secure=self, params=params, cohort=cohort, weights=global_weights, pool=pool
                )
            try:
                total = self.secure_sum(
                    params=params,
                    input_for=inputs,
                    rng=stream_rng(
                        seed=self.config.seed, stream=Stream.QUANTIZE, ids=(server_round,)
                    ),
                )
            except SecAggAbortedError as exc:
                _log.warning("round %d: %s", server_round, exc)
                total = None
        yield from inputs.replies
        if total is None:
            return
        mean, _ = dequantize_mean(
            total.total,
            clip_range=params.clip_range,
            bits=params.bits,
            shapes=[w.shape for w in global_weights],
        )
        yield SecureMean(mean_update=mean, count=len(total.survivors), dropped=len(total.dropped))


class _Inputs:
    """One secure round's inputs by slot, from each client's reply (kept without weights)."""

    def __init__(
        self,
        *,
        secure: SecureCohort,
        params: SecAggParams,
        cohort: list[int],
        weights: list[np.ndarray],
    ) -> None:
        self.secure, self.params, self.cohort, self.weights = secure, params, cohort, weights
        self.replies: list[ClientUpdate | Refusal] = []

    def _input(self, reply: Reply) -> tuple[list[np.ndarray], int] | None:
        if not isinstance(reply, ClientUpdate | Refusal):
            raise TypeError(f"a client's reply, not {type(reply).__name__}")
        if isinstance(reply, Refusal) or reply.weights is None:
            self.replies.append(reply)
            return None  # drops out after sharing keys: its masks are removed
        self.replies.append(dataclasses.replace(reply, weights=None))
        delta = [w - g for w, g in zip(reply.weights, self.weights, strict=True)]
        if self.secure.config.client_dp:
            return self._noised(delta, reply.client_id), 1
        return delta, reply.num_examples

    def _noised(self, delta: list[np.ndarray], cid: int) -> list[np.ndarray]:
        config = self.secure.config
        mechanism = ClientDP(
            clip_norm=config.client_clip,
            noise_multiplier=config.client_noise,
            min_contributors=self.params.threshold,
        )
        rng = stream_rng(
            seed=config.seed, stream=Stream.CLIENT_NOISE, ids=(self.params.server_round, cid)
        )
        return clip_and_noise(delta, mechanism=mechanism, rng=rng).arrays


class _BatchedInputs(_Inputs):
    """Inputs from the batched trainer's replies, taken as the sum asks for each slot."""

    def __init__(self, *, replies: Iterator[Reply], **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self._replies = replies
        self._waiting: dict[int, Reply] = {}

    def __call__(self, slot: int) -> tuple[list[np.ndarray], int] | None:
        cid = self.cohort[slot - 1]
        while cid not in self._waiting:
            reply = next(self._replies)
            if not isinstance(reply, ClientUpdate | Refusal):
                raise TypeError(f"a client's reply, not {type(reply).__name__}")
            self._waiting[reply.client_id] = reply
        return self._input(self._waiting.pop(cid))


class _MaskedInputs(_Inputs):
    """Inputs trained one client at a time; the next client trains while one is masked."""

    def __init__(self, *, pool: ThreadPoolExecutor, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.pool = pool
        self._pending: dict[int, Future[ClientUpdate | Refusal]] = {}

    def _start(self, slot: int) -> None:
        if slot <= len(self.cohort) and slot not in self._pending:
            self._pending[slot] = self.pool.submit(
                self.secure.one.train_one,
                self.params.server_round,
                self.cohort[slot - 1],
                self.weights,
            )

    def __call__(self, slot: int) -> tuple[list[np.ndarray], int] | None:
        self._start(slot)
        reply = self._pending.pop(slot).result()
        # Torch releases the GIL in its kernels: training and mask expansion overlap.
        self._start(slot + 1)
        return self._input(reply)
