"""Known-answer tests for the SecAgg+ crypto layer, with independent verifiers.

``tests/vectors/secagg.json`` comes from ``tests/vectors/gen_secagg_vectors.py`` (the
specification restated with OpenSSL primitives and a pure-Python X25519). Here fedguard
must reproduce every value, and a second implementation of each primitive, written from
its standard with ``hmac``/``hashlib`` and AES-ECB only, must reproduce them too:

* HKDF-SHA256 by hand (RFC 5869), itself checked on RFC 5869's test cases 1 and 3;
* AES-256 checked on FIPS-197 appendix C.3; the CTR keystream rebuilt block by block
  from AES-ECB of the big-endian counter;
* AES-256-GCM rebuilt from AES-ECB and a GF(2**128) GHASH (NIST SP 800-38D), itself
  checked on the GCM specification's test cases 13 and 14;
* X25519 on RFC 7748 (sections 5.2 and 6.1) through ``_hazmat``;
* Shamir shares solved back to their polynomial by Gaussian elimination mod 2**521 - 1.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fedguard.privacy.secagg import SecAggParams, _hazmat, shamir
from fedguard.privacy.secagg.client import (
    ClientState,
    SecAggClient,
    pairwise_mask_key,
    self_mask_key,
)
from fedguard.privacy.secagg.messages import MaskedInputRequest
from fedguard.privacy.secagg.server import SecAggServer
from fedguard.privacy.secagg.signing import advertise_message, consistency_message

VECTORS = json.loads(
    (Path(__file__).parents[2] / "vectors" / "secagg.json").read_text(encoding="utf-8")
)
PRIME = 2**521 - 1


# --- independent implementations ------------------------------------------------------


def hkdf_sha256(ikm: bytes, *, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869, section 2, from HMAC-SHA256 alone."""
    prk = hmac.new(salt or bytes(32), ikm, hashlib.sha256).digest()
    okm, block = b"", b""
    for i in range(1, -(-length // 32) + 1):
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        okm += block
    return okm[:length]


def aes_block(key: bytes, block: bytes) -> bytes:
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return encryptor.update(block) + encryptor.finalize()


def ctr_keystream(key: bytes, size: int) -> bytes:
    """AES-CTR from a zero 128-bit big-endian counter, one ECB block at a time."""
    blocks = -(-size // 16)
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    counters = b"".join(i.to_bytes(16, "big") for i in range(blocks))
    return (encryptor.update(counters) + encryptor.finalize())[:size]


def _gf128_mul(x: int, y: int) -> int:
    """Multiplication in GF(2**128) with GCM's bit order (SP 800-38D, algorithm 1)."""
    z, v = 0, y
    for i in range(128):
        if (x >> (127 - i)) & 1:
            z ^= v
        v = (v >> 1) ^ (0xE1 << 120) if v & 1 else v >> 1
    return z


def gcm_encrypt(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-GCM with a 96-bit nonce (SP 800-38D, 7.1): ciphertext || 16-byte tag."""
    h = int.from_bytes(aes_block(key, bytes(16)), "big")
    j0 = nonce + (1).to_bytes(4, "big")
    stream = b"".join(
        aes_block(key, nonce + (2 + i).to_bytes(4, "big")) for i in range(-(-len(plaintext) // 16))
    )
    ciphertext = bytes(p ^ s for p, s in zip(plaintext, stream, strict=False))

    def padded(data: bytes) -> bytes:
        return data + bytes(-len(data) % 16)

    blob = (
        padded(aad)
        + padded(ciphertext)
        + (8 * len(aad)).to_bytes(8, "big")
        + (8 * len(ciphertext)).to_bytes(8, "big")
    )
    s = 0
    for i in range(0, len(blob), 16):
        s = _gf128_mul(s ^ int.from_bytes(blob[i : i + 16], "big"), h)
    tag = int.from_bytes(aes_block(key, j0), "big") ^ s
    return ciphertext + tag.to_bytes(16, "big")


def solve_polynomial(points: dict[int, int], degree_plus_one: int) -> list[int]:
    """Coefficients c_0..c_{t-1} through t points: Gaussian elimination mod PRIME."""
    xs = sorted(points)[:degree_plus_one]
    rows = [[pow(x, j, PRIME) for j in range(degree_plus_one)] + [points[x]] for x in xs]
    n = degree_plus_one
    for col in range(n):
        pivot = next(r for r in range(col, n) if rows[r][col])
        rows[col], rows[pivot] = rows[pivot], rows[col]
        inv = pow(rows[col][col], PRIME - 2, PRIME)  # Fermat, not pow(., -1, .)
        rows[col] = [v * inv % PRIME for v in rows[col]]
        for r in range(n):
            if r != col and rows[r][col]:
                f = rows[r][col]
                rows[r] = [(a - f * b) % PRIME for a, b in zip(rows[r], rows[col], strict=True)]
    return [rows[i][n] for i in range(n)]


# --- the independent implementations against published answers -----------------------


def test_hkdf_by_hand_rfc5869_cases():
    # RFC 5869, appendix A.1 (basic) and A.3 (no salt, no info).
    okm = hkdf_sha256(
        b"\x0b" * 22,
        salt=bytes(range(13)),
        info=bytes(range(0xF0, 0xFA)),
        length=42,
    )
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )
    okm = hkdf_sha256(b"\x0b" * 22, salt=b"", info=b"", length=42)
    assert okm.hex() == (
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
    )


def test_aes256_fips197_known_answer():
    # FIPS-197, appendix C.3 (AES-256).
    out = aes_block(bytes(range(32)), bytes.fromhex("00112233445566778899aabbccddeeff"))
    assert out.hex() == "8ea2b7ca516745bfeafc49904b496089"


def test_gcm_by_hand_spec_cases():
    # McGrew & Viega, "The Galois/Counter Mode of Operation", test cases 13 and 14.
    assert gcm_encrypt(bytes(32), bytes(12), b"", b"").hex() == "530f8afbc74536b9a963b4f1c4cb738b"
    assert gcm_encrypt(bytes(32), bytes(12), bytes(16), b"").hex() == (
        "cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919"
    )


def test_x25519_rfc7748():
    # Section 5.2, first vector: scalar x u-coordinate.
    out = _hazmat.agree(
        bytes.fromhex("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4"),
        bytes.fromhex("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c"),
    )
    assert out.hex() == "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"
    # Section 6.1: Alice and Bob.
    v = VECTORS["mask_keys"]
    alice, bob = bytes.fromhex(v["alice_private"]), bytes.fromhex(v["bob_private"])
    assert _hazmat.public_key(alice).hex() == (
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    )
    assert _hazmat.public_key(bob).hex() == (
        "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
    )
    shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    assert _hazmat.agree(alice, _hazmat.public_key(bob)).hex() == shared
    assert _hazmat.agree(bob, _hazmat.public_key(alice)).hex() == shared
    assert v["shared"] == shared


def test_x25519_rejects_low_order_points_and_bad_lengths():
    alice = bytes.fromhex(VECTORS["mask_keys"]["alice_private"])
    for low_order in (bytes(32), (1).to_bytes(32, "little")):
        with pytest.raises(_hazmat.SecAggError):
            _hazmat.agree(alice, low_order)
    with pytest.raises(_hazmat.SecAggError):
        _hazmat.agree(alice, bytes(31))
    with pytest.raises(_hazmat.SecAggError):
        _hazmat.public_key(bytes(33))


# --- fedguard against the vectors, and the vectors against the verifiers --------------


def test_label_prefix_is_pinned():
    assert VECTORS["label_prefix"].encode() == _hazmat.LABEL_PREFIX


@pytest.mark.parametrize("v", VECTORS["derive_key"], ids=lambda v: v["purpose"])
def test_derive_key(v):
    secret, context = bytes.fromhex(v["secret"]), bytes.fromhex(v["context"])
    key = _hazmat.derive_key(secret, purpose=v["purpose"], context=context)
    assert key.hex() == v["key"]
    info = b"fedguard/v1/secagg/" + v["purpose"].encode() + b"\x00" + context
    assert hkdf_sha256(secret, salt=b"", info=info, length=32).hex() == v["key"]


def test_derive_key_separates_purposes_and_contexts():
    secret = bytes(32)
    keys = {
        _hazmat.derive_key(secret, purpose=p, context=c)
        for p in ("self-mask", "pairwise-mask", "share-seal")
        for c in (b"run\x001", b"run\x002", b"other\x001")
    }
    assert len(keys) == 9


@pytest.mark.parametrize("v", VECTORS["seal"], ids=["share", "empty"])
def test_seal_from_parts(v):
    key, nonce = bytes.fromhex(v["key"]), bytes.fromhex(v["nonce"])
    plaintext, aad = bytes.fromhex(v["plaintext"]), bytes.fromhex(v["aad"])
    sealed = _hazmat._seal_from_parts(key, plaintext, aad=aad, nonce=nonce)
    assert sealed.hex() == v["sealed"]
    assert sealed == b"\x01" + nonce + gcm_encrypt(key, nonce, plaintext, b"\x01" + aad)
    assert _hazmat.open_sealed(key, sealed, aad=aad) == plaintext
    # Any flipped bit, another aad, another key or another version byte: one error.
    for bad_payload, bad_aad, bad_key in [
        (sealed[:-1] + bytes([sealed[-1] ^ 1]), aad, key),
        (sealed[:13] + bytes([sealed[13] ^ 0x80]) + sealed[14:], aad, key),
        (sealed, aad + b"x", key),
        (sealed, aad, bytes(32)),
        (b"\x02" + sealed[1:], aad, key),
        (sealed[:28], aad, key),
    ]:
        with pytest.raises(_hazmat.SecAggError, match=r"^cannot open sealed payload$"):
            _hazmat.open_sealed(bad_key, bad_payload, aad=bad_aad)


def test_seal_draws_a_fresh_nonce():
    key = bytes(range(32))
    a, b = _hazmat.seal(key, b"x", aad=b""), _hazmat.seal(key, b"x", aad=b"")
    assert a != b and a[0] == b[0] == _hazmat.SEAL_VERSION
    assert _hazmat.open_sealed(key, a, aad=b"") == b"x"


@pytest.mark.parametrize(
    "v", VECTORS["expand_mask"], ids=lambda v: f"u{v['ring_bits']}x{v['length']}"
)
def test_expand_mask(v):
    key = bytes.fromhex(v["key"])
    dtype = np.uint32 if v["ring_bits"] == 32 else np.uint64
    mask = _hazmat.expand_mask(key, length=v["length"], dtype=dtype)
    assert mask.dtype == dtype and mask.shape == (v["length"],)
    assert [int(x) for x in mask[:8]] == v["first"]
    assert int(mask[-1]) == v["last"]
    raw = mask.astype(np.dtype(dtype).newbyteorder("<")).tobytes()
    assert hashlib.sha256(raw).hexdigest() == v["sha256"]
    # Independent: AES-ECB of counter blocks 0, 1, 2, ...
    stream = ctr_keystream(key, len(raw))
    assert stream == raw
    width = v["ring_bits"] // 8
    assert [int.from_bytes(stream[i * width : (i + 1) * width], "little") for i in range(8)] == (
        v["first"]
    )


def test_expand_mask_prefix_and_length_checks():
    key = bytes(range(32))
    long = _hazmat.expand_mask(key, length=100, dtype=np.uint32)
    assert np.array_equal(_hazmat.expand_mask(key, length=7, dtype=np.uint32), long[:7])
    assert _hazmat.expand_mask(key, length=0, dtype=np.uint64).size == 0
    with pytest.raises(_hazmat.SecAggError):
        _hazmat.expand_mask(bytes(16), length=4, dtype=np.uint32)


@pytest.mark.parametrize("v", VECTORS["shamir"], ids=lambda v: f"t{v['threshold']}")
def test_shamir_split_and_combine(v):
    secret, t = bytes.fromhex(v["secret"]), v["threshold"]
    coefficients = [int(c) for c in v["coefficients"]]
    shares = shamir._split_from_parts(
        secret, threshold=t, holders=v["holders"], coefficients=coefficients
    )
    assert {str(x): s.hex() for x, s in shares.items()} == v["shares"]
    for subset in v["subsets"]:
        chosen = {x: bytes.fromhex(v["shares"][str(x)]) for x in subset}
        assert shamir.combine(chosen, threshold=t) == secret
        # Independent: solve the Vandermonde system for the whole polynomial.
        coeffs = solve_polynomial({x: int.from_bytes(s, "big") for x, s in chosen.items()}, t)
        assert coeffs == [int.from_bytes(secret, "big"), *(c % PRIME for c in coefficients)]


def _params(d: dict) -> SecAggParams:
    return SecAggParams(**(d | {"names": tuple(d.get("names", ()))}))


def test_session_context_is_pinned():
    v = VECTORS["session_context"]
    params = _params(v["params"])
    assert params.context().hex() == v["context"]
    # And every mask key vector above was derived under this very context.
    assert params == _params(VECTORS["mask_keys"]["params"])


def _signature_key():
    return ec.EllipticCurvePublicKey.from_encoded_point(
        ec.SECP384R1(), bytes.fromhex(VECTORS["signatures"]["public_x962"])
    )


@pytest.mark.parametrize("v", VECTORS["signatures"]["cases"], ids=["advertise", "consistency"])
def test_signature_vector_verifies_and_nothing_else_does(v):
    """A fixed key and fixed (RFC 6979) signature: fedguard's verify accepts exactly it."""
    key = _signature_key()
    label, message = bytes.fromhex(v["label"]), bytes.fromhex(v["message"])
    signature = bytes.fromhex(v["signature"])
    assert label in (_hazmat.SIGN_ADVERTISE, _hazmat.SIGN_CONSISTENCY)
    assert _hazmat.verify(key, signature, label=label, message=message)
    other_label = next(x for x in (_hazmat.SIGN_ADVERTISE, _hazmat.SIGN_CONSISTENCY) if x != label)
    flipped = bytearray(signature)
    flipped[-1] ^= 1
    wrong_context = bytes([message[0] ^ 1]) + message[1:]
    other_key = ec.derive_private_key(2, ec.SECP384R1()).public_key()
    assert not _hazmat.verify(key, bytes(flipped), label=label, message=message)
    assert not _hazmat.verify(key, signature, label=other_label, message=message)
    assert not _hazmat.verify(key, signature, label=label, message=wrong_context)
    assert not _hazmat.verify(other_key, signature, label=label, message=message)
    assert not _hazmat.verify(key, b"", label=label, message=message)
    with pytest.raises(_hazmat.SecAggError, match="unknown signature label"):
        _hazmat.verify(key, signature, label=b"fedguard/other\x00", message=message)


def test_the_signed_messages_are_the_specified_bytes():
    params = _params(VECTORS["session_context"]["params"])
    adv, cons = VECTORS["signatures"]["cases"]
    enc, mask = bytes(range(32)), bytes(range(32, 64))
    assert advertise_message(params, slot=2, encryption=enc, masking=mask).hex() == adv["message"]
    assert consistency_message(params, [3, 1, 2]).hex() == cons["message"]


def test_sign_then_verify_round_trip_with_a_fresh_key():
    key = _hazmat.new_signing_key()
    for label in (_hazmat.SIGN_ADVERTISE, _hazmat.SIGN_CONSISTENCY):
        signature = _hazmat.sign(key, label=label, message=b"m")
        assert _hazmat.verify(key.public_key(), signature, label=label, message=b"m")
        assert not _hazmat.verify(key.public_key(), signature, label=label, message=b"n")
    # ECDSA is randomised: two signatures of one message differ, both verify.
    a = _hazmat.sign(key, label=_hazmat.SIGN_ADVERTISE, message=b"m")
    b = _hazmat.sign(key, label=_hazmat.SIGN_ADVERTISE, message=b"m")
    assert a != b
    p256 = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(_hazmat.SecAggError, match="not an EC P-384 key"):
        _hazmat.sign(p256, label=_hazmat.SIGN_ADVERTISE, message=b"m")


def test_pairwise_and_self_mask_keys():
    v = VECTORS["mask_keys"]
    params = _params(v["params"])
    alice, bob = bytes.fromhex(v["alice_private"]), bytes.fromhex(v["bob_private"])
    shared = bytes.fromhex(v["shared"])
    for case in v["pairwise"]:
        s1, s2 = case["slots"]
        from_alice = pairwise_mask_key(
            params, private=alice, peer_public=bytes.fromhex(v["bob_public"]), slots=(s1, s2)
        )
        from_bob = pairwise_mask_key(
            params, private=bob, peer_public=bytes.fromhex(v["alice_public"]), slots=(s2, s1)
        )
        assert from_alice.hex() == from_bob.hex() == case["key"]
        info = b"fedguard/v1/secagg/pairwise-mask\x00" + params.context() + b"\x00%d-%d" % (s1, s2)
        assert hkdf_sha256(shared, salt=b"", info=info, length=32).hex() == case["key"]
    for case in v["self"]:
        seed = bytes.fromhex(case["seed"])
        assert self_mask_key(params, slot=case["slot"], seed=seed).hex() == case["key"]
        info = b"fedguard/v1/secagg/self-mask\x00" + params.context() + b"\x00%d" % case["slot"]
        assert hkdf_sha256(seed, salt=b"", info=info, length=32).hex() == case["key"]


@pytest.mark.parametrize(
    "v", VECTORS["full_round"], ids=lambda v: f"ring{v['params']['ring_bits']}"
)
def test_full_round_masked_inputs(v):
    """Three nodes with fixed keys: each masked input, and the sum, are pinned."""
    params = _params(v["params"])
    # Signing keys are not pinned (ECDSA is randomised); the masks never depend on them.
    keys = {name: _hazmat.new_signing_key() for name in params.names}
    roster = {name: k.public_key() for name, k in keys.items()}
    clients = {}
    for slot_text, node in v["nodes"].items():
        slot = int(slot_text)
        state = ClientState(
            params=params,
            slot=slot,
            stage=1,
            encryption_private=bytes.fromhex(node["encryption_private"]),
            masking_private=bytes.fromhex(node["masking_private"]),
            seed=bytes.fromhex(node["seed"]),
        )
        clients[slot] = SecAggClient(state, signing_key=keys[params.names[slot - 1]], roster=roster)
    server = SecAggServer(params)
    share_requests = server.receive_keys([c.advertise() for c in clients.values()])
    replies = [clients[s].share_keys(r) for s, r in share_requests.items()]
    mask_requests: dict[int, MaskedInputRequest] = server.receive_shares(replies)
    rng = np.random.default_rng(v["rng_seed"])
    modulus = 2**params.ring_bits
    for slot, request in mask_requests.items():
        node = v["nodes"][str(slot)]
        update = [np.asarray(u, dtype=np.float32) for u in node["update"]]
        reply = clients[slot].masked_input(request, update=update, weight=node["weight"], rng=rng)
        assert reply.masked.dtype == params.dtype
        assert [int(x) for x in reply.masked] == node["masked"]
        # The pinned masked input is the pinned quantised input plus masks, mod the ring.
        assert any(
            (m - q) % modulus for m, q in zip(node["masked"], node["quantized"], strict=True)
        )
        server.add_masked_input(reply)
    signed = [clients[s].consistency(r) for s, r in server.consistency_requests().items()]
    unmask = [clients[s].unmask(r) for s, r in server.receive_consistency(signed).items()]
    total = server.receive_unmask(unmask).total
    assert [int(x) for x in total] == v["sum"]
    plain = [
        sum(col) % modulus
        for col in zip(*(n["quantized"] for n in v["nodes"].values()), strict=True)
    ]
    assert plain == v["sum"]
