"""What a node imports and initialises once, before it forks its SuperNode and ClientApps.

A module imported, or OpenSSL state built, in a fork is that fork's own memory; done
once in the launcher, before the fork, it is shared copy-on-write by the SuperNode, its
SuperExec and every ClientApp (see README, Load).
"""

from __future__ import annotations

from pathlib import Path

from fedguard.deploy_config import NodeConfig

__all__ = ["preload_modules", "warm_up_crypto"]

# What every ClientApp a node forks imports, so that it is imported once, before the
# fork, and shared: a module imported in a fork is that fork's own memory (torch._dynamo,
# which torch's optimizers import on first use: ~70 MB per training fork; measured).
_PRELOAD = (
    "torch",
    "torch._dynamo",
    "opacus",
    "fedguard.client.app",
    "cryptography.hazmat.backends.openssl",  # secure aggregation's key agreement
)
_SPLIT = "sklearn.model_selection"
_DATA_LOADERS = {  # what fedguard.task.load_dataset imports for each kind of data
    "sklearn": ("sklearn.datasets", _SPLIT),
    ".csv": ("pyarrow.csv", "pyarrow.parquet", _SPLIT),
    ".parquet": ("pyarrow.csv", "pyarrow.parquet", _SPLIT),
    ".npz": (_SPLIT,),
}


def warm_up_crypto() -> None:
    """Initialise, once before the forks, the OpenSSL state that the SuperNode (its node
    key) and every ClientApp of a secure round (X25519, HKDF, AES-GCM) would otherwise
    each build for themselves: ~2.5 MB and ~6 MB per process, measured. Throwaway keys
    from the OS generator; nothing of them is kept or used again."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, x25519
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    node_key = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    serialization.load_ssh_private_key(node_key, None)
    a, b = x25519.X25519PrivateKey.generate(), x25519.X25519PrivateKey.generate()
    kdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"fedguard/warm-up")
    AESGCM(kdf.derive(a.exchange(b.public_key()))).encrypt(bytes(12), b"", None)


def preload_modules(cfg: NodeConfig) -> list[str]:
    """Modules the node's SuperNode imports before it forks its ClientApp executor."""
    dataset = cfg.data.dataset
    kind = "sklearn" if dataset in ("digits", "breast_cancer") else Path(dataset).suffix.lower()
    return [*_PRELOAD, *_DATA_LOADERS.get(kind, ())]
