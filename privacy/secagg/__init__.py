"""Secure aggregation (SecAgg+, Bell et al. 2020): the server learns only the cohort's sum.

Recipes only: :class:`SecAggClient` and :class:`SecAggServer` (the two halves of a
round), :func:`make_params`, :func:`secure_sum_in_process`, and the quantisation
helpers. The primitives (X25519, HKDF-SHA256, AES-GCM, AES-CTR) stay in ``_hazmat``.

Threat model: the server may deviate from the protocol (malicious: it may drop, reorder,
alter or invent any message it relays) and up to ``c`` nodes may collude with it, ``c``
being the session's ``max_colluding`` (federation.toml ``[secagg] max-colluding-nodes``,
bound into the context; a node refuses a session assuming fewer than its own node.toml
value). Public keys
reach nodes through the server but are signed with each node's node key and checked
against a roster of node keys every node received out of band, so a server that
substitutes keys (a man-in-the-middle) is refused, naming the slot. The server chooses
every parameter, and all of them (and the names by slot) are bound into every derived key,
seal and signature, so it cannot tell two nodes different parameters in one round. In the
consistency stage each survivor signs the one survivor set it was told, and reveals shares
only when at least ``q = max(t, floor((n + c) / 2) + 1)`` survivors signed that same set:
two different sets could both reach q only if more than ``c`` nodes signed both, so a
server lying about who dropped out is caught. That needs an honest node to sign one set
per *context* (not per session: a round re-run with the same parameters has the same
context); the deployed node records it durably (``fedguard.client.signed_sets``). A node
also refuses ``t <= c`` (the server places the nodes: c colluders could surround one).
What then holds: the server learns no individual input unless more than ``c`` nodes
collude with it; it can always make a round abort (nothing is aggregated then).
"""

from __future__ import annotations

from ._hazmat import SecAggError
from .client import ClientState, SecAggClient
from .local import RoundCost, secure_sum_in_process
from .maskfree import secure_sum_without_masks
from .messages import (
    AdvertiseKeys,
    ConsistencyReply,
    ConsistencyRequest,
    MaskedInputReply,
    MaskedInputRequest,
    NeighbourKeys,
    RevealedShare,
    SealedShare,
    Setup,
    ShareKeysReply,
    ShareKeysRequest,
    UnmaskReply,
    UnmaskRequest,
)
from .params import SecAggParams, SecAggSettings, choose_degree, make_params, neighbours
from .quantize import dequantize_mean, quantization_step, quantize
from .server import SecAggAbortedError, SecAggServer, SecureSum
from .signing import Roster, quorum

__all__ = [
    "AdvertiseKeys",
    "ClientState",
    "ConsistencyReply",
    "ConsistencyRequest",
    "MaskedInputReply",
    "MaskedInputRequest",
    "NeighbourKeys",
    "RevealedShare",
    "Roster",
    "RoundCost",
    "SealedShare",
    "SecAggAbortedError",
    "SecAggClient",
    "SecAggError",
    "SecAggParams",
    "SecAggServer",
    "SecAggSettings",
    "SecureSum",
    "Setup",
    "ShareKeysReply",
    "ShareKeysRequest",
    "UnmaskReply",
    "UnmaskRequest",
    "choose_degree",
    "dequantize_mean",
    "make_params",
    "neighbours",
    "quantization_step",
    "quantize",
    "quorum",
    "secure_sum_in_process",
    "secure_sum_without_masks",
]
