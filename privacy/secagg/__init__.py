"""Secure aggregation (SecAgg+, Bell et al. 2020): the server learns only the cohort's sum.

Recipes only: :class:`SecAggClient` and :class:`SecAggServer` (the two halves of a
round), :func:`make_params`, :func:`secure_sum_in_process`, and the quantisation
helpers. The primitives (X25519, HKDF-SHA256, AES-GCM, AES-CTR) stay in ``_hazmat``.

Threat model: the server is honest-but-curious (follows the protocol, reads everything it
receives); nodes are curious; fewer than ``threshold`` nodes of any neighbourhood collude
with the server. Public keys reach nodes through the server, so a server that substitutes
keys (an active man-in-the-middle) is outside this model; node authentication and TLS
keep outsiders from doing so.
"""

from __future__ import annotations

from ._hazmat import SecAggError
from .client import ClientState, SecAggClient
from .local import RoundCost, secure_sum_in_process
from .messages import (
    AdvertiseKeys,
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
from .params import SecAggParams, choose_degree, make_params, neighbours
from .quantize import dequantize_mean, quantization_step, quantize
from .server import SecAggAbortedError, SecAggServer, SecureSum

__all__ = [
    "AdvertiseKeys",
    "ClientState",
    "MaskedInputReply",
    "MaskedInputRequest",
    "NeighbourKeys",
    "RevealedShare",
    "RoundCost",
    "SealedShare",
    "SecAggAbortedError",
    "SecAggClient",
    "SecAggError",
    "SecAggParams",
    "SecAggServer",
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
    "secure_sum_in_process",
]
