"""Deployed nodes' generator: the whole MT19937 state from the OS, not a 32-bit seed."""

import struct

import torch

from fedguard.privacy.rng import os_entropy_generator


def test_torch_seeds_keep_only_32_bits_which_is_why_nodes_do_not_seed():
    a = torch.Generator().manual_seed(7)
    b = torch.Generator().manual_seed(7 + 2**32)
    assert torch.equal(torch.randn(8, generator=a), torch.randn(8, generator=b))


def test_state_words_come_from_the_os_and_differ_between_generators():
    states = [bytes(os_entropy_generator().get_state().numpy()) for _ in range(3)]
    words = [struct.unpack_from("<624Q", s, 24) for s in states]
    assert len({w for w in words}) == 3
    # 32-bit words, as MT19937 holds them, and not the words any 32-bit seed gives.
    assert all(0 <= x < 2**32 for w in words for x in w)
    seeded = struct.unpack_from(
        "<624Q", bytes(torch.Generator().manual_seed(0).get_state().numpy()), 24
    )
    assert all(w != seeded for w in words)


def test_the_generator_draws_normally_distributed_noise():
    g = os_entropy_generator()
    x = torch.randn(200_000, generator=g)
    assert abs(float(x.mean())) < 0.01 and abs(float(x.std()) - 1.0) < 0.01
    other = torch.randn(10, generator=os_entropy_generator())
    assert not torch.equal(torch.randn(10, generator=g), other)
