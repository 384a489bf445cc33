"""Wire encoding of fedguard's own messages (the only code that touches protobuf types)."""

from __future__ import annotations

from .serde import (
    WireError,
    decode_client_state,
    decode_receipt,
    decode_secagg,
    encode_client_state,
    encode_receipt,
    encode_secagg,
)

__all__ = [
    "WireError",
    "decode_client_state",
    "decode_receipt",
    "decode_secagg",
    "encode_client_state",
    "encode_receipt",
    "encode_secagg",
]
