"""A node's roster: every federation node's public key, which the server cannot alter.

node.toml ``[secagg] roster = "<folder>"`` names a folder holding one ``NAME.pub`` per node
of the federation: the same OpenSSH EC P-384 public keys the operator enrols, handed to
each node's IT team out of band (fingerprints checked, e.g. ``ssh-keygen -lf NAME.pub``).
Secure aggregation checks every neighbour's signed keys and every signature on the
survivor set against it (:mod:`fedguard.privacy.secagg.signing`); keys that reached the
node only through the server would prove nothing, as the server could substitute them.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedguard.deploy.certs import _NODE_NAME as NODE_NAME
from fedguard.deploy.certs import load_public_key_openssh
from fedguard.errors import DataError, invalid

__all__ = ["load_node_key", "load_roster", "own_roster_name"]

_KEY = "secagg.roster"


def load_roster(
    folder: Path, *, source: Path, own_name: str, own_key: Path | None
) -> dict[str, ec.EllipticCurvePublicKey]:
    """The roster in ``folder``: node name -> public key, checked.

    Raises ``ConfigError`` (one line naming ``source``, ``secagg.roster`` and the value)
    when ``folder`` is not a folder, holds a ``.pub`` file that is not an EC P-384 OpenSSH
    public key or whose name breaks the node-name rule, or does not hold this node: the
    public half of ``own_key`` (a node is who its key says, as the server names it by the
    key it enrolled; ``node.name`` only labels its lines), or ``own_name`` without a key.
    """
    if not folder.is_dir():
        raise invalid(
            _KEY, allowed="a folder of NAME.pub node keys", got=str(folder), source=source
        )
    roster: dict[str, ec.EllipticCurvePublicKey] = {}
    for path in sorted(folder.glob("*.pub")):
        name = path.name.removesuffix(".pub")
        if not NODE_NAME.match(name):
            raise invalid(
                _KEY,
                allowed="NAME.pub files, NAME a letter or digit then up to 62 of A-Z a-z 0-9 _ . -",
                got=str(path),
                source=source,
            )
        try:
            text = load_public_key_openssh(path)
        except DataError as exc:
            raise invalid(
                _KEY,
                allowed="EC P-384 OpenSSH public keys (ecdsa-sha2-nistp384 AAAA... name)",
                got=f"{path} ({' '.join(str(exc).split())[:160]})",
                source=source,
            ) from None
        key = serialization.load_ssh_public_key(text.encode())
        if not isinstance(key, ec.EllipticCurvePublicKey):  # checked above; for the types
            raise invalid(_KEY, allowed="EC public keys", got=str(path), source=source)
        # One key under two names would sign twice and hold two shares of everything.
        numbers = key.public_numbers()
        same = next((n for n, k in roster.items() if k.public_numbers() == numbers), None)
        if same is not None:
            raise invalid(
                _KEY,
                allowed="one key per node (each NAME.pub a different key)",
                got=f"{path} holds the key of {same}.pub",
                source=source,
            )
        roster[name] = key
    if own_key is None:
        if own_name not in roster:
            raise invalid(
                _KEY,
                allowed=f"a folder holding this node's own {own_name}.pub among the nodes' keys",
                got=f"{folder} ({len(roster)} keys, none named {own_name})",
                source=source,
            )
        return roster
    if own_roster_name(roster, load_node_key(own_key, source=source)) is None:
        raise invalid(
            _KEY,
            allowed=f"a folder holding this node's own public key (the pair of {own_key})",
            got=f"{folder} ({len(roster)} keys, none of them this node's)",
            source=source,
        )
    return roster


def own_roster_name(
    roster: dict[str, ec.EllipticCurvePublicKey], key: ec.EllipticCurvePrivateKey
) -> str | None:
    """The roster name whose public key is ``key``'s (None when it holds none)."""
    pub, fmt = serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    mine = key.public_key().public_bytes(pub, fmt)
    found = [n for n, k in roster.items() if k.public_bytes(pub, fmt) == mine]
    return found[0] if len(found) == 1 else None


def load_node_key(path: Path, *, source: Path) -> ec.EllipticCurvePrivateKey:
    """The node key (OpenSSH EC P-384 private key, from `fedguard certs node`)."""
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise invalid(
            "node.private-key",
            allowed="an unencrypted OpenSSH EC P-384 private key",
            got=f"{path} ({' '.join(str(exc).split())[:120]})",
            source=source,
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP384R1):
        raise invalid(
            "node.private-key",
            allowed="an unencrypted OpenSSH EC P-384 private key",
            got=f"{path} (another kind of key)",
            source=source,
        )
    return key
