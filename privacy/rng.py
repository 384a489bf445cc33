"""Random generators for deployed nodes: full-entropy, never a 32-bit seed.

``torch.Generator().manual_seed(s)`` keeps only the low 32 bits of ``s`` for its Mersenne
Twister (seeds ``x`` and ``x + 2**32`` give the same stream), so a node seeded that way
draws its DP noise from one of ~4.3 billion streams: someone who saw one node's update
alone could try them all and subtract the noise. :func:`os_entropy_generator` instead
fills the whole MT19937 state (624 words of 32 bits) from the OS CSPRNG. MT19937 is not a
cryptographic generator (its outputs would reveal its state), but nothing of its raw output
is ever released: only noise added to gradients.
"""

from __future__ import annotations

import os
import struct

import torch

__all__ = ["os_entropy_generator"]

# torch's CPUGeneratorImplState (aten/src/ATen/CPUGeneratorImpl.cpp, torch 2.x):
# int64 the_initial_seed, int32 left, int32 seeded, uint64 next, uint64 state[624], ...
_STATE_BYTES = 5056
_HEADER = struct.Struct("<qiiQ")
_WORDS = 624
_WORDS_AT = _HEADER.size


def os_entropy_generator() -> torch.Generator:
    """A CPU generator with all 19,968 bits of MT19937 state from ``os.urandom``."""
    g = torch.Generator()
    g.manual_seed(1)  # a valid header: seeded, left = 1 (twist before the next draw)
    state = bytearray(g.get_state().numpy().tobytes())
    if len(state) != _STATE_BYTES or _HEADER.unpack_from(state, 0) != (1, 1, 1, 0):
        raise RuntimeError(
            f"torch {torch.__version__}: unexpected CPU generator state layout; "
            "fedguard.privacy.rng must be updated before nodes can draw noise"
        )
    words = struct.unpack(f"<{_WORDS}I", os.urandom(4 * _WORDS))
    struct.pack_into(f"<{_WORDS}Q", state, _WORDS_AT, *words)
    _HEADER.pack_into(state, 0, 0, 1, 1, 0)  # no seed: the state is all there is
    g.set_state(torch.frombuffer(state, dtype=torch.uint8).clone())
    return g
