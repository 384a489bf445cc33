"""Regenerate ``secagg.json``: known answers for fedguard's SecAgg+ crypto layer.

Provenance. Every expected value here is computed from the *specification* of
fedguard's wire format, never by calling ``fedguard``:

* HKDF-SHA256 (RFC 5869), no salt, ``info = b"fedguard/v1/secagg/" + purpose + b"\\x00"
  + context``, 32-byte output: ``cryptography``'s HKDF (OpenSSL).
* Sealed shares: ``0x01 || nonce || AES-256-GCM(key, nonce, plaintext, aad=0x01 || aad)``:
  ``cryptography``'s AESGCM (OpenSSL).
* Masks: the AES-256-CTR keystream of the key from a zero 128-bit counter, read as
  little-endian uint32/uint64: ``cryptography``'s AES-CTR (OpenSSL).
* X25519: a pure-Python Montgomery ladder written from RFC 7748, section 5 (checked
  below against the RFC's section 6.1 vector), *not* OpenSSL.
* Shamir shares: ``f(x) = sum(c_j * x**j) mod 2**521 - 1`` with big-endian 66-byte
  shares, evaluated term by term (fedguard uses Horner's rule).
* Session context: ``SHA-256(b"fedguard/secagg/v1/session\\x00" || for each field:
  4-byte big-endian length || field)`` over run, round, cohort, degree, threshold, bits,
  ``float.hex(clip_range)``, weight cap, ring bits, graph seed, max colluding (decimal
  ASCII), the number of names and each name (UTF-8): ``hashlib``.
* Signatures: ECDSA P-384 / SHA-384 over ``label || message`` with RFC 6979 deterministic
  nonces (``cryptography``, checked below against RFC 6979 appendix A.2.6), DER-encoded.
* Quantisation: the formula in ``fedguard.privacy.secagg.quantize`` restated with numpy,
  using one ``numpy.random.default_rng(seed)`` consumed in slot order (one
  ``rng.random(n, dtype=float32)`` per node), as ``secure_sum_in_process`` does.

``tests/privacy/secagg/test_vectors.py`` then checks fedguard against these values and
checks the values against a second, independent set of implementations (HKDF from
``hmac``, AES-CTR from AES-ECB counter blocks, AES-GCM from ECB + GHASH by hand,
Lagrange/Gaussian elimination over the field, FIPS-197/RFC known answers).

Run from the repository root: ``.venv/bin/python tests/vectors/gen_secagg_vectors.py``.
The output is deterministic; rerunning must leave ``secagg.json`` unchanged.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

OUT = Path(__file__).with_name("secagg.json")
LABEL_PREFIX = b"fedguard/v1/secagg/"
PRIME = 2**521 - 1
SHARE_BYTES = 66

# RFC 7748, section 6.1.
ALICE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
BOB = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
ALICE_PUBLIC = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
BOB_PUBLIC = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
SHARED = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"


def _fixed(label: str) -> bytes:
    """A fixed 32-byte value, reproducible from its label."""
    return hashlib.sha256(b"fedguard/vectors/" + label.encode()).digest()


# --- X25519 from RFC 7748, section 5 ---------------------------------------------------

_P25519 = 2**255 - 19
_A24 = 121665


def x25519(scalar: bytes, u: bytes) -> bytes:
    k = bytearray(scalar)
    k[0] &= 248
    k[31] &= 127
    k[31] |= 64
    n = int.from_bytes(k, "little")
    ub = bytearray(u)
    ub[31] &= 127
    x1 = int.from_bytes(ub, "little") % _P25519
    x2, z2, x3, z3, swap = 1, 0, x1, 1, 0
    for t in reversed(range(255)):
        bit = (n >> t) & 1
        swap ^= bit
        if swap:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = bit
        a, b = (x2 + z2) % _P25519, (x2 - z2) % _P25519
        aa, bb = a * a % _P25519, b * b % _P25519
        e = (aa - bb) % _P25519
        c, d = (x3 + z3) % _P25519, (x3 - z3) % _P25519
        da, cb = d * a % _P25519, c * b % _P25519
        x3 = (da + cb) ** 2 % _P25519
        z3 = x1 * (da - cb) ** 2 % _P25519
        x2 = aa * bb % _P25519
        z2 = e * (aa + _A24 * e) % _P25519
    if swap:
        x2, z2 = x3, z3
    return (x2 * pow(z2, _P25519 - 2, _P25519) % _P25519).to_bytes(32, "little")


def x25519_public(scalar: bytes) -> bytes:
    return x25519(scalar, (9).to_bytes(32, "little"))


# --- the specification, restated ------------------------------------------------------


def hkdf_label(secret: bytes, purpose: str, context: bytes) -> bytes:
    info = LABEL_PREFIX + purpose.encode() + b"\x00" + context
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def seal(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    return b"\x01" + nonce + AESGCM(key).encrypt(nonce, plaintext, b"\x01" + aad)


def keystream(key: bytes, size: int) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    return enc.update(bytes(size)) + enc.finalize()


def mask(key: bytes, length: int, ring_bits: int) -> list[int]:
    width = ring_bits // 8
    stream = keystream(key, length * width)
    return [int.from_bytes(stream[i * width : (i + 1) * width], "little") for i in range(length)]


def shamir_shares(secret: bytes, coefficients: list[int], holders: list[int]) -> dict[int, str]:
    poly = [int.from_bytes(secret, "big"), *(c % PRIME for c in coefficients)]
    return {
        x: (sum(c * pow(x, j, PRIME) for j, c in enumerate(poly)) % PRIME)
        .to_bytes(SHARE_BYTES, "big")
        .hex()
        for x in holders
    }


def context(params: dict[str, Any]) -> bytes:
    names = list(params.get("names", []))
    fields = [
        params["run"],
        str(params["server_round"]),
        str(params["cohort"]),
        str(params["degree"]),
        str(params["threshold"]),
        str(params["bits"]),
        float(params["clip_range"]).hex(),
        str(params["weight_cap"]),
        str(params["ring_bits"]),
        str(params["graph_seed"]),
        str(params.get("max_colluding", 0)),
        str(len(names)),
        *names,
    ]
    h = hashlib.sha256(b"fedguard/secagg/v1/session\x00")
    for f in fields:
        data = f.encode()
        h.update(len(data).to_bytes(4, "big") + data)
    return h.digest()


# RFC 6979, appendix A.2.6 (P-384): the private key, and the SHA-384 signature of "sample".
RFC6979_X = int(
    "6B9D3DAD2E1B8C1C05B19875B6659F4DE23C3B667BF297BA9AA47740787137D8"
    "96D5724E4C70A825F872C9EA60D2EDF5",
    16,
)
RFC6979_R = int(
    "94EDBB92A5ECB8AAD4736E56C691916B3F88140666CE9FA73D64C4EA95AD133C"
    "81A648152E44ACF96E36DD1E80FABE46",
    16,
)
RFC6979_S = int(
    "99EF4AEB15F178CEA1FE40DB2603138F130E740A19624526203B6351D0A3A94F"
    "A329C145786E679E7B82C71A38628AC8",
    16,
)


def ecdsa_p384(private: int, data: bytes) -> bytes:
    key = ec.derive_private_key(private, ec.SECP384R1())
    return key.sign(data, ec.ECDSA(hashes.SHA384(), deterministic_signing=True))


def signature_vectors() -> dict[str, Any]:
    key = ec.derive_private_key(RFC6979_X, ec.SECP384R1())
    public = key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    ctx = context(PARAMS)
    adv_message = ctx + (2).to_bytes(4, "big") + bytes(range(32)) + bytes(range(32, 64))
    survivors = [1, 2, 3]
    cons_message = (
        ctx + len(survivors).to_bytes(4, "big") + b"".join(x.to_bytes(4, "big") for x in survivors)
    )
    cases = []
    for label, message in (
        (b"fedguard/secagg/v1/advertise\x00", adv_message),
        (b"fedguard/secagg/v1/consistency\x00", cons_message),
    ):
        cases.append(
            {
                "label": label.hex(),
                "message": message.hex(),
                "signature": ecdsa_p384(RFC6979_X, label + message).hex(),
            }
        )
    return {"public_x962": public.hex(), "cases": cases}


def quantize(
    flat: np.ndarray, weight: int, clip: float, bits: int, rng: np.random.Generator
) -> list[int]:
    levels = 2**bits - 1
    scaled = (np.clip(flat, -clip, clip) + clip) * (levels / (2 * clip))
    q = np.minimum(np.floor(scaled + rng.random(scaled.shape, dtype=np.float32)), levels)
    return [int(v) * weight for v in q] + [weight]


# --- the vectors ----------------------------------------------------------------------

PARAMS: dict[str, Any] = {
    "run": "vector-run",
    "server_round": 7,
    "cohort": 3,
    "degree": 2,
    "threshold": 2,
    "clip_range": 1.0,
    "bits": 8,
    "weight_cap": 10,
    "ring_bits": 32,
    "graph_seed": 1,
    "names": ["alice", "bob", "carol"],
    "max_colluding": 1,
}
CTX = context(PARAMS)


def derive_key_vectors() -> list[dict[str, str]]:
    cases = [
        (bytes(range(32)), "self-mask", CTX + b"\x001"),
        (bytes.fromhex(SHARED), "pairwise-mask", CTX + b"\x001-2"),
        (b"\xff" * 32, "share-seal", CTX + b"\x002>1"),
        (b"\x0b" * 22, "any-purpose", b""),
    ]
    return [
        {
            "secret": s.hex(),
            "purpose": p,
            "context": c.hex(),
            "key": hkdf_label(s, p, c).hex(),
        }
        for s, p, c in cases
    ]


def seal_vectors() -> list[dict[str, str]]:
    plain = bytes([1]) + (1).to_bytes(4, "big") + (2).to_bytes(4, "big") + bytes(range(132))
    cases = [
        (bytes(range(32)), bytes(range(12)), plain, CTX + b"\x001>2"),
        (_fixed("seal-key"), _fixed("seal-nonce")[:12], b"", b""),
    ]
    return [
        {
            "key": k.hex(),
            "nonce": n.hex(),
            "plaintext": p.hex(),
            "aad": a.hex(),
            "sealed": seal(k, n, p, a).hex(),
        }
        for k, n, p, a in cases
    ]


def mask_vectors() -> list[dict[str, Any]]:
    out = []
    for key, length, ring_bits in [
        (bytes(range(32)), 1000, 32),
        (bytes(range(32)), 500, 64),
        (_fixed("mask-key"), 37, 32),
        (_fixed("mask-key"), 37, 64),
    ]:
        values = mask(key, length, ring_bits)
        raw = keystream(key, length * ring_bits // 8)
        out.append(
            {
                "key": key.hex(),
                "length": length,
                "ring_bits": ring_bits,
                "first": values[:8],
                "last": values[-1],
                "sha256": hashlib.sha256(raw).hexdigest(),
            }
        )
    return out


def shamir_vectors() -> list[dict[str, Any]]:
    cases = [
        (bytes(range(32)), 3, [1, 2, 3, 4, 5], [2**520 + 12345, 987654321], [[1, 2, 3], [2, 4, 5]]),
        (_fixed("shamir-1"), 1, [1, 2], [], [[1], [2]]),
        (
            _fixed("shamir-2"),
            4,
            [1, 3, 4, 7, 9, 11, 12],
            [PRIME + 5, 2**255 - 19, int.from_bytes(_fixed("c"), "big")],
            [[1, 3, 4, 7], [12, 11, 9, 7], [3, 9, 11, 1]],
        ),
        (b"\xff" * 32, 2, [1, 2, 3], [PRIME - 1], [[2, 3]]),
    ]
    return [
        {
            "secret": s.hex(),
            "threshold": t,
            "holders": h,
            "coefficients": [str(c) for c in cs],
            "shares": {str(x): v for x, v in shamir_shares(s, cs, h).items()},
            "subsets": subsets,
        }
        for s, t, h, cs, subsets in cases
    ]


def mask_key_vectors() -> dict[str, Any]:
    a_pub, b_pub = x25519_public(ALICE), x25519_public(BOB)
    shared = x25519(ALICE, b_pub)
    assert shared == x25519(BOB, a_pub)
    return {
        "params": PARAMS,
        "alice_private": ALICE.hex(),
        "bob_private": BOB.hex(),
        "alice_public": a_pub.hex(),
        "bob_public": b_pub.hex(),
        "shared": shared.hex(),
        "pairwise": [
            {
                "slots": [s1, s2],
                "key": hkdf_label(shared, "pairwise-mask", CTX + b"\x00%d-%d" % (s1, s2)).hex(),
            }
            for s1, s2 in [(1, 2), (2, 3), (1, 3)]
        ],
        "self": [
            {
                "slot": slot,
                "seed": _fixed(f"seed-{slot}").hex(),
                "key": hkdf_label(
                    _fixed(f"seed-{slot}"), "self-mask", CTX + b"\x00%d" % slot
                ).hex(),
            }
            for slot in (1, 2, 3)
        ],
    }


def full_round(ring_bits: int) -> dict[str, Any]:
    """Three nodes, complete graph: each node's masked input and the unmasked sum."""
    params = dict(PARAMS, ring_bits=ring_bits, run=f"vector-run-{ring_bits}")
    ctx = context(params)
    masking = {1: ALICE, 2: BOB, 3: _fixed("carol")}
    nodes: dict[int, dict[str, Any]] = {}
    for slot in (1, 2, 3):
        nodes[slot] = {
            "encryption_private": _fixed(f"enc-{slot}-{ring_bits}").hex(),
            "masking_private": masking[slot].hex(),
            "seed": _fixed(f"seed-{slot}-{ring_bits}").hex(),
        }
    # Multiples of 1/256: scaled levels are exact, so no float rounding order matters.
    updates = {
        1: [[[0.5, -0.25], [1.5, -2.0]], [0.0, 0.125, -1.0]],
        2: [[[-0.75, 0.25], [0.99609375, -0.00390625]], [1.0, -0.5, 0.3125]],
        3: [[[0.0, 0.0], [0.0, 0.0]], [-1.25, 2.5, 0.0625]],
    }
    weights = {1: 3, 2: 10, 3: 25}  # 25 > weight_cap: the node caps it to 10
    rng = np.random.default_rng(20261127)
    modulus = 2**ring_bits
    total = None
    for slot in (1, 2, 3):
        flat = np.concatenate([np.asarray(u, dtype=np.float64).ravel() for u in updates[slot]])
        weight = min(max(weights[slot], 1), params["weight_cap"])
        plain = quantize(flat, weight, params["clip_range"], params["bits"], rng)
        length = len(plain)
        seed = bytes.fromhex(nodes[slot]["seed"])
        masked = [
            (v + m) % modulus
            for v, m in zip(
                plain,
                mask(hkdf_label(seed, "self-mask", ctx + b"\x00%d" % slot), length, ring_bits),
                strict=True,
            )
        ]
        for peer in (1, 2, 3):
            if peer == slot:
                continue
            shared = x25519(masking[slot], x25519_public(masking[peer]))
            low, high = sorted((slot, peer))
            key = hkdf_label(shared, "pairwise-mask", ctx + b"\x00%d-%d" % (low, high))
            sign = 1 if slot < peer else -1
            masked = [
                (v + sign * m) % modulus
                for v, m in zip(masked, mask(key, length, ring_bits), strict=True)
            ]
        nodes[slot].update(
            update=updates[slot], weight=weights[slot], quantized=plain, masked=masked
        )
        total = (
            plain
            if total is None
            else [(a + b) % modulus for a, b in zip(total, plain, strict=True)]
        )
    return {"params": params, "rng_seed": 20261127, "nodes": nodes, "sum": total}


def main() -> None:
    # The ladder must reproduce RFC 7748's section 6.1 before it is trusted.
    assert x25519_public(ALICE).hex() == ALICE_PUBLIC
    assert x25519_public(BOB).hex() == BOB_PUBLIC
    assert x25519(ALICE, bytes.fromhex(BOB_PUBLIC)).hex() == SHARED
    # Deterministic ECDSA must reproduce RFC 6979's A.2.6 before it is trusted.
    assert decode_dss_signature(ecdsa_p384(RFC6979_X, b"sample")) == (RFC6979_R, RFC6979_S)
    vectors = {
        "provenance": (
            "tests/vectors/gen_secagg_vectors.py: computed from the specification "
            "(cryptography/OpenSSL HKDF, AES-GCM, AES-CTR; pure-Python RFC 7748 X25519; "
            "term-by-term Shamir polynomials over 2**521 - 1; numpy quantisation), not "
            "from fedguard; verified independently by tests/privacy/secagg/test_vectors.py"
        ),
        "label_prefix": LABEL_PREFIX.decode(),
        "derive_key": derive_key_vectors(),
        "seal": seal_vectors(),
        "expand_mask": mask_vectors(),
        "shamir": shamir_vectors(),
        "mask_keys": mask_key_vectors(),
        "session_context": {"params": PARAMS, "context": CTX.hex()},
        "signatures": signature_vectors(),
        "full_round": [full_round(32), full_round(64)],
    }
    OUT.write_text(json.dumps(vectors, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
