"""A deployed node's side of secure aggregation, across the round's five messages.

Flower runs every message in a fresh ClientApp (here: a fresh forked process), so the
node keeps its round's secrets in its state folder between stages: the SecAgg+ client
state (``fedguard.v1.ClientState``, 0600) and its noised update and weight (``.npz``,
0600, loaded without pickle). The update is deleted once masked, the client state once
the last stage is answered; a new round's setup replaces an abandoned one. What the node
sent, and which update it masked into which session, stays in its journal
(:mod:`fedguard.client.released`): one trained update goes into at most one secure sum.
The node checks the server's parameters against its own policy (node.toml [secagg])
before it trains, signs with its node key (node.toml [node] private-key) and checks the
other nodes' signatures against its roster ([secagg] roster): without a roster it takes
part in no secure round.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np

from fedguard._io import atomic_write_bytes
from fedguard.client.released import (
    Journal,
    MaskedRecord,
    Session,
    params_session_id,
    read_journal,
    request_digest,
    session_id,
    update_digest,
    write_journal,
)
from fedguard.client.secure_identity import check_identity, node_roster
from fedguard.client.signed_sets import record_signed, signed_set, survivors_digest
from fedguard.client.state_lock import hold_lock
from fedguard.deploy.roster import load_node_key
from fedguard.deploy_config import NodeConfig
from fedguard.errors import PolicyRefusalError
from fedguard.files import BUDGET_LOCK, RELEASED_FILE, SESSION_FILE, SIGNED_FILE, UPDATE_FILE
from fedguard.fl.loop import TrainRequest
from fedguard.privacy.client_dp import ClientDP, clip_and_noise
from fedguard.privacy.secagg import (
    ConsistencyRequest,
    MaskedInputRequest,
    SecAggClient,
    SecAggError,
    Setup,
    ShareKeysRequest,
    UnmaskRequest,
)
from fedguard.privacy.secagg.client import ClientState
from fedguard.transport import decode_client_state, decode_secagg, encode_client_state
from fedguard.transport.serde import encode_secagg

__all__ = ["RELEASED_FILE", "SESSION_FILE", "UPDATE_FILE", "NodeSecAgg", "read_stored_update"]

_STAGE: dict[type, str] = {
    ShareKeysRequest: "share-keys",
    MaskedInputRequest: "masked-input",
    ConsistencyRequest: "consistency",
    UnmaskRequest: "unmask",
}
_Stage = ShareKeysRequest | MaskedInputRequest | ConsistencyRequest | UnmaskRequest


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
        check_identity(self.config, setup)
        return setup

    def _client(self, state: ClientState | None = None, setup: Setup | None = None) -> SecAggClient:
        """This node's SecAgg+ client: node key, roster and policy from node.toml."""
        node, policy = self.config.node, self.config.secagg
        if node.private_key is None:
            raise SecAggError("node.toml [node] private-key: not set; no secure round")
        key = load_node_key(node.private_key, source=self.config.source)
        roster, floor, c = node_roster(self.config), self._min_holders(), policy.max_colluding_nodes
        if state is not None:
            return SecAggClient(
                state, signing_key=key, roster=roster, min_holders=floor, max_colluding=c
            )
        if setup is None:
            raise SecAggError("no secure-aggregation session on this node")
        return SecAggClient.create(
            params=setup.params,
            slot=setup.slot,
            signing_key=key,
            roster=roster,
            min_holders=floor,
            max_colluding=c,
        )

    def begin(
        self, *, setup: Setup, update: list[np.ndarray], request: TrainRequest | None = None
    ) -> bytes:
        """Store the trained update and fresh keys; the reply advertising them.

        With client-level DP in ``request``, the update is clipped and this node's noise
        share added first (OS entropy), so nothing stored or sent is un-noised. Asked again
        for an update it already masked: the same session is answered with the same keys
        (the stored advert), any other is refused (``PolicyRefusalError``): one update goes
        into at most one secure sum. An update keys were advertised for but never masked
        keeps its stored noise share (never a second fresh one). An update given back
        (its ledger round void, :mod:`fedguard.client.void`) is refused.
        """
        # The same lock as the node's void: an update is given back or masked, never both.
        with hold_lock(self.dir / BUDGET_LOCK):
            return self._begin(setup=setup, update=update, request=request)

    def _begin(
        self, *, setup: Setup, update: list[np.ndarray], request: TrainRequest | None
    ) -> bytes:
        journal = read_journal(self.dir / RELEASED_FILE)
        sid, digest = session_id(setup), update_digest(update)
        r = setup.params.server_round
        if digest in journal.void:
            raise PolicyRefusalError(
                f"round {r} refused: this update was given back (its ledger round is void: "
                "it was never released); it is never masked now"
            )
        run = request.run_key if request is not None else setup.params.run
        current = journal.session
        if current is not None and (current.id, current.update) == (sid, digest):
            stored = current.replies.get("advertise")
            if stored is not None and (current.masked or not current.abandoned):
                return stored[1]  # the same session: the same keys, nothing new
        done = journal.masked_record(digest)
        if done is not None:
            raise PolicyRefusalError(
                f"round {r} refused: this update (run {done.run!r} round "
                f"{done.server_round}) was already masked into secure-aggregation session "
                f"{done.session[:12]}; masked into another sum it could be recovered by "
                "subtracting the two (only that same session is answered again)"
            )
        noised = self._stored_noised(digest)
        if noised is not None:
            flat, weight = noised
        else:
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
            flat = np.concatenate([np.asarray(u, dtype=np.float32).ravel() for u in update])
            weight = self.examples
            buf = io.BytesIO()
            np.savez(
                buf,
                update=flat,
                weight=np.array(weight, dtype=np.int64),
                digest=np.frombuffer(bytes.fromhex(digest), dtype=np.uint8),
            )
            atomic_write_bytes(self.dir / UPDATE_FILE, buf.getvalue(), mode=0o600)
        client = self._client(setup=setup)
        advert = encode_secagg(client.advertise())
        journal.session = Session(
            run=run, server_round=r, id=sid, update=digest, replies={"advertise": (sid, advert)}
        )
        # The journal first: a session whose keys it does not name is never continued.
        write_journal(self.dir / RELEASED_FILE, journal)
        self._save(client)
        return advert

    def step(self, payload: bytes) -> bytes:
        """Answer one of stages 1-4 (share keys, masked input, consistency, unmask).

        A stage of the journal's session asked again with the very same request gets the
        very same reply bytes; with another request it is refused (a second, different
        answer could reveal both kinds of share of a neighbour, or a second masked input).
        """
        if not self.dir.is_dir():
            raise SecAggError("no secure-aggregation session on this node")
        with hold_lock(self.dir / BUDGET_LOCK):  # see begin
            return self._step(payload)

    def _step(self, payload: bytes) -> bytes:
        request = decode_secagg(payload, expect=tuple(_STAGE))
        if not isinstance(request, _Stage):
            raise SecAggError(f"unexpected stage {type(request).__name__}")
        stage = _STAGE[type(request)]
        journal = read_journal(self.dir / RELEASED_FILE)
        session = journal.session
        asked = request_digest(payload)
        if session is not None and stage in session.replies:
            if session.replies[stage][0] == asked:
                return session.replies[stage][1]
            self._abandon(journal)
            raise SecAggError(
                f"{stage} of session {session.id[:12]} was already answered for another "
                "request; refusing a second, different answer"
            )
        path = self.dir / SESSION_FILE
        try:
            state = decode_client_state(path.read_bytes())
        except FileNotFoundError:
            raise SecAggError("no secure-aggregation session on this node") from None
        if (
            session is None
            or session.abandoned
            or (params_session_id(state.params, state.slot) != session.id)
        ):
            path.unlink(missing_ok=True)
            raise SecAggError("no secure-aggregation session on this node (journal mismatch)")
        client = self._client(state)
        try:
            reply = self._answer(client, request, journal, session, asked)
        except SecAggError:
            # Abandon the session: a refused or failed stage is never retried, so a server
            # cannot ask the same question twice with different survivor lists.
            self._abandon(journal)
            raise
        return reply

    def _abandon(self, journal: Journal) -> None:
        (self.dir / SESSION_FILE).unlink(missing_ok=True)
        if journal.session is not None and not journal.session.abandoned:
            journal.session.abandoned = True
            write_journal(self.dir / RELEASED_FILE, journal)

    def _stored_noised(self, digest: str) -> tuple[np.ndarray, int] | None:
        """The noised update stored for the trained update ``digest`` (never masked)."""
        try:
            raw = (self.dir / UPDATE_FILE).read_bytes()
            with np.load(io.BytesIO(raw), allow_pickle=False) as stored:
                mark = stored["digest"] if "digest" in stored.files else None
            if mark is None or mark.dtype != np.uint8 or mark.tobytes().hex() != digest:
                return None
            return read_stored_update(raw)
        except (SecAggError, ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile):
            return None  # none or unreadable: never masked, so a fresh share is one release

    def _answer(
        self,
        client: SecAggClient,
        request: _Stage,
        journal: Journal,
        session: Session,
        asked: str,
    ) -> bytes:
        stage = _STAGE[type(request)]
        if isinstance(request, ShareKeysRequest):
            reply = encode_secagg(client.share_keys(request))
            session.replies[stage] = (asked, reply)
            write_journal(self.dir / RELEASED_FILE, journal)
            self._save(client)
            return reply
        if isinstance(request, MaskedInputRequest):
            if session.update in journal.void:
                raise SecAggError("this update was given back (its ledger round is void)")
            try:
                raw = (self.dir / UPDATE_FILE).read_bytes()
            except FileNotFoundError:
                raise SecAggError("no trained update stored for this round") from None
            update, weight = read_stored_update(raw)
            masked = encode_secagg(
                client.masked_input(
                    request,
                    update=[update],
                    weight=weight,
                    # Stochastic rounding from OS entropy: nothing the server knows predicts it.
                    rng=np.random.default_rng(int.from_bytes(os.urandom(16), "little")),
                )
            )
            # Recorded (fsynced) before it is sent: this update never goes into another sum.
            session.replies[stage] = (asked, masked)
            journal.masked.append(
                MaskedRecord(
                    run=session.run,
                    server_round=session.server_round,
                    session=session.id,
                    update=session.update,
                )
            )
            if journal.held is not None and journal.held.update == session.update:
                journal.held = None  # released: it can never be given back
            write_journal(self.dir / RELEASED_FILE, journal)
            self._save(client)
            (self.dir / UPDATE_FILE).unlink(missing_ok=True)
            return masked
        if isinstance(request, ConsistencyRequest):
            # One set per session context, across sessions (a round re-run with the same
            # parameters has the same context): recorded, fsynced, before the signature
            # leaves; a different set under a context already signed is refused.
            context = client.state().params.context()
            signed_before = signed_set(self.dir / SIGNED_FILE, context)
            signature = client.consistency(request)
            if signed_before is None:
                record_signed(self.dir / SIGNED_FILE, context, request.survivors)
            elif signed_before != survivors_digest(request.survivors):
                raise SecAggError(
                    f"this node already signed another survivor set for round "
                    f"{session.server_round} of {session.run!r} with these parameters; "
                    "refusing to sign a second"
                )
            # Journal and state record the signed set too: within the session a second,
            # different request is refused (see step), never signed.
            signed = encode_secagg(signature)
            session.replies[stage] = (asked, signed)
            write_journal(self.dir / RELEASED_FILE, journal)
            self._save(client)
            return signed
        revealed = encode_secagg(client.unmask(request))
        session.replies[stage] = (asked, revealed)
        write_journal(self.dir / RELEASED_FILE, journal)
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
