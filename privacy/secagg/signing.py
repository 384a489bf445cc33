"""What nodes sign in a SecAgg+ round, and how many signatures make a quorum.

Bell et al. 2020 (CCS), the malicious setting: a node signs its advertised keys and, in the
consistency stage, the one survivor set the server told it; it reveals shares only for that
set and only once a quorum of survivors signed the very same set. Signatures are ECDSA
P-384 / SHA-384 with the node key (``_hazmat.sign``), checked against a roster of node
keys each node received out of band, never from the server. Each signed message starts
with the session context (:meth:`SecAggParams.context`), so a signature made for one
round, run or set of parameters verifies for no other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cryptography.hazmat.primitives.asymmetric import ec

from .params import SecAggParams

__all__ = ["Roster", "advertise_message", "consistency_message", "quorum"]

Roster = Mapping[str, ec.EllipticCurvePublicKey]
"""Node name -> its node public key, as the node's IT team received them (out of band)."""


def quorum(params: SecAggParams) -> int:
    """Signatures a survivor set needs: ``max(t, floor((n + c) / 2) + 1)``, with ``c`` the
    session's ``max_colluding`` (the same for every node: each holder of a node's shares
    counts the same quorum).

    Two different sets that each reached q signers share at least ``2q - n > c`` signers,
    so with at most ``c`` colluding nodes an honest node would have signed twice, which it
    never does.
    """
    return max(params.threshold, (params.cohort + params.max_colluding) // 2 + 1)


def advertise_message(
    params: SecAggParams, *, slot: int, encryption: bytes, masking: bytes
) -> bytes:
    """What a node signs over its advertised keys (after the advertise label)."""
    return params.context() + slot.to_bytes(4, "big") + encryption + masking


def consistency_message(params: SecAggParams, survivors: Sequence[int]) -> bytes:
    """What a node signs over the survivor set (after the consistency label)."""
    slots = sorted(survivors)
    return (
        params.context()
        + len(slots).to_bytes(4, "big")
        + b"".join(s.to_bytes(4, "big") for s in slots)
    )
