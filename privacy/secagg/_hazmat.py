"""The few cryptographic primitives secure aggregation is built from (``cryptography`` only).

Nothing outside :mod:`fedguard.privacy.secagg` imports this module; the protocol code uses
these functions, never the primitives directly. Every key is derived with HKDF-SHA256 and
an ``info`` label naming the protocol, its version, the purpose, and the run and round, so
keys for different purposes, runs or rounds are never the same. Every failure raises
:class:`SecAggError` with a fixed message (no padding or tag oracle to probe).

Each public function that needs randomness draws it from the OS and calls a deterministic
``_..._from_parts`` core that tests pin with known-answer vectors. Signatures (ECDSA P-384,
SHA-384, with the node key) are the exception: randomised, so tests pin a verification.
"""

from __future__ import annotations

import functools
import hashlib
import os

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fedguard.errors import SecAggError  # under FedguardError: callers catch one family

__all__ = [
    "KEY_BYTES",
    "LABEL_PREFIX",
    "MaskExpander",
    "SEAL_VERSION",
    "SIGN_ADVERTISE",
    "SIGN_CONSISTENCY",
    "SecAggError",
    "agree",
    "derive_key",
    "expand_mask",
    "new_keypair",
    "open_sealed",
    "public_key",
    "new_signing_key",
    "same_public_key",
    "seal",
    "session_digest",
    "sign",
    "verify",
]

KEY_BYTES = 32
"""X25519 keys, HKDF outputs and AES-256 keys are all 32 bytes (RFC 7748, FIPS 197)."""
LABEL_PREFIX = b"fedguard/v1/secagg/"
"""Start of every HKDF ``info`` label: protocol and version, so no key is shared across contexts."""
SEAL_VERSION = 1
"""First byte of every sealed payload, so a future format is told apart, not misread."""
_NONCE_BYTES = 12  # AES-GCM's 96-bit nonce (NIST SP 800-38D, 8.2)
SIGN_ADVERTISE = b"fedguard/secagg/v1/advertise\x00"
"""Label of a node's signature on its advertised keys (stage 0)."""
SIGN_CONSISTENCY = b"fedguard/secagg/v1/consistency\x00"
"""Label of a node's signature on the survivor set it was told (consistency stage)."""
SESSION_LABEL = b"fedguard/secagg/v1/session\x00"
_SIGN_LABELS = (SIGN_ADVERTISE, SIGN_CONSISTENCY)
_MAX_SIGNATURE_BYTES = 112  # DER of two 384-bit integers: 104 at most, with slack


def new_keypair() -> tuple[bytes, bytes]:
    """A fresh X25519 key pair from the OS CSPRNG: ``(private, public)``, 32 bytes each."""
    private = os.urandom(KEY_BYTES)
    return private, public_key(private)


def public_key(private: bytes) -> bytes:
    """The X25519 public key of ``private`` (32 raw bytes)."""
    if len(private) != KEY_BYTES:
        raise SecAggError("bad private key")
    key = X25519PrivateKey.from_private_bytes(private)
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


@functools.lru_cache(maxsize=8)
def _private_key(private: bytes) -> X25519PrivateKey:
    # A node agrees with each of its k neighbours under one key: parse it once. The
    # cache holds only keys the caller holds anyway, and only the last few.
    return X25519PrivateKey.from_private_bytes(private)


def agree(private: bytes, peer_public: bytes) -> bytes:
    """X25519 shared secret; rejects malformed and low-order peer keys."""
    if len(private) != KEY_BYTES or len(peer_public) != KEY_BYTES:
        raise SecAggError("bad key length")
    try:
        # `cryptography` raises ValueError on an all-zero result (a low-order point).
        return _private_key(private).exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:
        raise SecAggError("key agreement failed") from None


def derive_key(secret: bytes, *, purpose: str, context: bytes) -> bytes:
    """HKDF-SHA256 (RFC 5869) of ``secret`` under ``fedguard/v1/secagg/<purpose>`` + context."""
    info = LABEL_PREFIX + purpose.encode() + b"\x00" + context
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(secret)


def seal(key: bytes, plaintext: bytes, *, aad: bytes) -> bytes:
    """AES-256-GCM encrypt: ``version || nonce || ciphertext+tag`` with a random nonce."""
    return _seal_from_parts(key, plaintext, aad=aad, nonce=os.urandom(_NONCE_BYTES))


def _seal_from_parts(key: bytes, plaintext: bytes, *, aad: bytes, nonce: bytes) -> bytes:
    if len(key) != KEY_BYTES or len(nonce) != _NONCE_BYTES:
        raise SecAggError("bad key or nonce length")
    header = bytes([SEAL_VERSION]) + nonce
    return header + AESGCM(key).encrypt(nonce, plaintext, bytes([SEAL_VERSION]) + aad)


def open_sealed(key: bytes, payload: bytes, *, aad: bytes) -> bytes:
    """Decrypt and authenticate a :func:`seal` payload; any failure is one SecAggError."""
    if len(key) != KEY_BYTES or len(payload) < 1 + _NONCE_BYTES + 16:
        raise SecAggError("cannot open sealed payload")
    if payload[0] != SEAL_VERSION:
        raise SecAggError("cannot open sealed payload")
    nonce, body = payload[1 : 1 + _NONCE_BYTES], payload[1 + _NONCE_BYTES :]
    try:
        return AESGCM(key).decrypt(nonce, body, bytes([SEAL_VERSION]) + aad)
    except InvalidTag:
        raise SecAggError("cannot open sealed payload") from None


class MaskExpander:
    """Expands mask keys into ``length`` uniform ring integers (AES-256-CTR keystream).

    The counter starts at zero: each mask key comes from HKDF with the run, round and
    node pair in its label and expands exactly one mask, so a (key, counter) pair is
    never used twice. Little-endian, so every platform expands the same mask. One
    expander reuses its buffers across masks (a round expands up to k + 1 per node):
    :meth:`expand` returns a view that the next call overwrites.
    """

    def __init__(self, *, length: int, dtype: type[np.unsignedinteger]) -> None:
        self.length = length
        self.dtype = np.dtype(dtype).newbyteorder("<")
        size = length * self.dtype.itemsize
        self._zeros = bytes(size)
        self._out = bytearray(size + 15)  # update_into wants a block's slack
        self._view = np.frombuffer(memoryview(self._out)[:size], dtype=self.dtype)

    def expand(self, key: bytes) -> np.ndarray:
        if len(key) != KEY_BYTES:
            raise SecAggError("bad mask key length")
        encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
        if encryptor.update_into(self._zeros, self._out) != len(self._zeros):
            raise SecAggError("keystream too short")
        return self._view


def expand_mask(key: bytes, *, length: int, dtype: type[np.unsignedinteger]) -> np.ndarray:
    """One mask as a fresh array (see :class:`MaskExpander`)."""
    return MaskExpander(length=length, dtype=dtype).expand(key).astype(dtype)


# --- Signatures with the node key (ECDSA P-384, SHA-384) --------------------------------
# The node key also authenticates the node to Flower's SuperLink. Every message signed here
# starts with a fedguard label ending in NUL, so no signature made for secure aggregation
# can be replayed as one of Flower's, nor one stage's as another's (domain separation).


def new_signing_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-384 key (the simulation's stand-in for a node key; deployed nodes load theirs)."""
    return ec.generate_private_key(ec.SECP384R1())


def _check_label(label: bytes) -> None:
    if label not in _SIGN_LABELS:
        raise SecAggError("unknown signature label")


def sign(key: ec.EllipticCurvePrivateKey, *, label: bytes, message: bytes) -> bytes:
    """ECDSA P-384 / SHA-384 over ``label || message``; DER-encoded, randomised."""
    _check_label(label)
    if not isinstance(key.curve, ec.SECP384R1):
        raise SecAggError("signing key is not an EC P-384 key")
    return key.sign(label + message, ec.ECDSA(hashes.SHA384()))


def verify(
    key: ec.EllipticCurvePublicKey, signature: bytes, *, label: bytes, message: bytes
) -> bool:
    """Whether ``signature`` is ``key``'s over ``label || message`` (never raises on bad input)."""
    _check_label(label)
    if not isinstance(key.curve, ec.SECP384R1) or not 0 < len(signature) <= _MAX_SIGNATURE_BYTES:
        return False
    try:
        key.verify(signature, label + message, ec.ECDSA(hashes.SHA384()))
    except (InvalidSignature, ValueError):
        return False
    return True


def same_public_key(a: ec.EllipticCurvePublicKey, b: ec.EllipticCurvePublicKey) -> bool:
    """Whether two EC public keys are the same point (compared as public bytes)."""
    pub, fmt = Encoding.X962, PublicFormat.UncompressedPoint
    return a.public_bytes(pub, fmt) == b.public_bytes(pub, fmt)


def session_digest(fields: tuple[bytes, ...]) -> bytes:
    """SHA-256 of :data:`SESSION_LABEL` and each field, 4-byte length first (unambiguous)."""
    h = hashlib.sha256(SESSION_LABEL)
    for f in fields:
        h.update(len(f).to_bytes(4, "big") + f)
    return h.digest()
