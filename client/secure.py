"""A deployed node's side of secure aggregation, across the round's four messages.

Flower runs every message in a fresh ClientApp (here: a fresh forked process), so the
node keeps its round's secrets in its state folder between stages: the SecAgg+ client
state (``fedguard.v1.ClientState``, 0600) and its update and weight (``.npz``, 0600,
loaded without pickle). Both are deleted when the round's last stage is answered; a new
round's setup replaces an abandoned one. The node checks the server's parameters against its own
policy (node.toml [secagg]) before it trains.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np

from fedguard._io import atomic_write_bytes
from fedguard.client.node import PolicyRefusalError
from fedguard.deploy_config import NodeConfig
from fedguard.federation import TrainRequest
from fedguard.privacy.client_dp import ClientDP, clip_and_noise
from fedguard.privacy.secagg import (
    MaskedInputReply,
    MaskedInputRequest,
    SecAggClient,
    SecAggError,
    Setup,
    ShareKeysReply,
    ShareKeysRequest,
    UnmaskReply,
    UnmaskRequest,
)
from fedguard.transport import decode_client_state, decode_secagg, encode_client_state
from fedguard.transport.serde import encode_secagg

__all__ = ["SESSION_FILE", "UPDATE_FILE", "NodeSecAgg", "read_stored_update"]

SESSION_FILE = "secagg-session.pb"
UPDATE_FILE = "secagg-update.npz"


class NodeSecAgg:
    """The node's secure-aggregation session in ``state_dir`` (one round at a time)."""

    def __init__(self, *, config: NodeConfig, examples: int = 0) -> None:
        self.config = config
        self.examples = examples  # the node's weight (capped by the server); set to train
        self.dir: Path = config.node.state_dir

    def check_request(self, *, setup_bytes: bytes | None, request: TrainRequest) -> Setup | None:
        """The round's setup, after checking it against the node's policy (before training)."""
        policy = self.config.secagg
        if request.client_noise > 0 and setup_bytes is None:
            raise PolicyRefusalError(
                f"round {request.server_round} refused: client-level DP noise shares are only "
                "safe inside a secure sum, and the server offered none"
            )
        if setup_bytes is None:
            if policy.required:
                raise PolicyRefusalError(
                    f"round {request.server_round} refused: the server did not offer secure "
                    "aggregation and this node's secagg.required is true (it would see our "
                    "update alone)"
                )
            return None
        setup = decode_secagg(setup_bytes, expect=Setup)
        if not isinstance(setup, Setup):
            raise SecAggError("expected the secure aggregation setup")
        p = setup.params
        if p.run != request.federation or p.server_round != request.server_round:
            raise PolicyRefusalError(
                f"secure aggregation setup for run {p.run!r} round {p.server_round} "
                f"does not match the request (run {request.federation!r} round "
                f"{request.server_round})"
            )
        if p.cohort < policy.min_neighbours + 1:
            raise PolicyRefusalError(
                f"round {request.server_round} refused: a cohort of {p.cohort} is below this "
                f"node's secagg.min-neighbours {policy.min_neighbours} + itself"
            )
        if request.client_noise > 0 and not 1 <= request.client_min_contributors <= p.threshold:
            raise PolicyRefusalError(
                f"round {request.server_round} refused: client-level DP assumes "
                f"{request.client_min_contributors} contributors, but the secure sum only "
                f"guarantees {p.threshold} (each share's noise would be too small)"
            )
        if not 1 <= setup.slot <= p.cohort:
            raise PolicyRefusalError(f"secure aggregation slot {setup.slot} outside 1..{p.cohort}")
        return setup

    def begin(
        self, *, setup: Setup, update: list[np.ndarray], request: TrainRequest | None = None
    ) -> bytes:
        """Store the trained update and fresh keys; the reply advertising them.

        With client-level DP in ``request``, the update is clipped and this node's noise
        share added first (OS entropy), so nothing stored or sent is un-noised.
        """
        if request is not None and request.client_noise > 0:
            update = clip_and_noise(
                update,
                mechanism=ClientDP(
                    clip_norm=request.client_clip,
                    noise_multiplier=request.client_noise,
                    min_contributors=request.client_min_contributors,
                ),
                rng=np.random.default_rng(int.from_bytes(os.urandom(16), "little")),
            ).arrays
        client = SecAggClient.create(
            params=setup.params, slot=setup.slot, min_holders=self._min_holders()
        )
        flat = np.concatenate([np.asarray(u, dtype=np.float32).ravel() for u in update])
        buf = io.BytesIO()
        np.savez(buf, update=flat, weight=np.array(self.examples, dtype=np.int64))
        atomic_write_bytes(self.dir / UPDATE_FILE, buf.getvalue(), mode=0o600)
        self._save(client)
        return encode_secagg(client.advertise())

    def step(self, payload: bytes) -> bytes:
        """Answer one of stages 1-3 (share keys, masked input, unmask)."""
        request = decode_secagg(
            payload, expect=(ShareKeysRequest, MaskedInputRequest, UnmaskRequest)
        )
        path = self.dir / SESSION_FILE
        try:
            state = decode_client_state(path.read_bytes())
        except FileNotFoundError:
            raise SecAggError("no secure-aggregation session on this node") from None
        client = SecAggClient(state, min_holders=self._min_holders())
        if not isinstance(request, ShareKeysRequest | MaskedInputRequest | UnmaskRequest):
            raise SecAggError(f"unexpected stage {type(request).__name__}")
        try:
            return encode_secagg(self._answer(client, request))
        except SecAggError:
            # Abandon the session: a refused or failed stage is never retried, so a server
            # cannot ask the same question twice with different survivor lists.
            path.unlink(missing_ok=True)
            (self.dir / UPDATE_FILE).unlink(missing_ok=True)
            raise

    def _answer(
        self,
        client: SecAggClient,
        request: ShareKeysRequest | MaskedInputRequest | UnmaskRequest,
    ) -> ShareKeysReply | MaskedInputReply | UnmaskReply:
        if isinstance(request, ShareKeysRequest):
            shares = client.share_keys(request)
            self._save(client)
            return shares
        if isinstance(request, MaskedInputRequest):
            try:
                raw = (self.dir / UPDATE_FILE).read_bytes()
            except FileNotFoundError:
                raise SecAggError("no trained update stored for this round") from None
            update, weight = read_stored_update(raw)
            masked = client.masked_input(
                request,
                update=[update],
                weight=weight,
                # Stochastic rounding from OS entropy: nothing the server knows predicts it.
                rng=np.random.default_rng(int.from_bytes(os.urandom(16), "little")),
            )
            self._save(client)
            (self.dir / UPDATE_FILE).unlink(missing_ok=True)
            return masked
        revealed = client.unmask(request)
        (self.dir / SESSION_FILE).unlink(missing_ok=True)
        return revealed

    def _min_holders(self) -> int:
        return self.config.secagg.min_neighbours + 1

    def _save(self, client: SecAggClient) -> None:
        atomic_write_bytes(self.dir / SESSION_FILE, encode_client_state(client.state()), mode=0o600)


def read_stored_update(raw: bytes) -> tuple[np.ndarray, int]:
    """The trained update and weight a node stored between training and masking.

    ``SecAggError`` when the bytes are not what the node wrote (never unpickles).
    """
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as stored:
            update, weight = stored["update"], stored["weight"]
    except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise SecAggError(f"stored update unreadable: {' '.join(str(exc).split())[:120]}") from None
    if update.ndim != 1 or update.dtype.kind != "f" or not np.isfinite(update).all():
        raise SecAggError("stored update unreadable: expected a finite 1-D float array")
    if weight.shape != () or weight.dtype.kind not in "iu" or int(weight) < 0:
        raise SecAggError("stored update unreadable: expected a weight >= 0")
    return update, int(weight)
