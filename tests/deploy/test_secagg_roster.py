"""node.toml ``[secagg] roster`` and ``max-colluding-nodes`` (#14.6): checked when node.toml
is loaded, and a node without a roster, or named wrongly in a session, takes part in no
secure round (refused before training, so nothing is spent).

Real files from the test harness's ``write_federation`` (real OpenSSH P-384 node keys),
real ``load_node_config`` and the real :class:`NodeSecAgg`.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from harness.federation_files import write_federation

from fedguard.client.secure import NodeSecAgg
from fedguard.deploy_config import load_node_config
from fedguard.errors import ConfigError, PolicyRefusalError
from fedguard.fl.loop import TrainRequest
from fedguard.privacy.secagg import (
    AdvertiseKeys,
    ConsistencyReply,
    ConsistencyRequest,
    MaskedInputRequest,
    NeighbourKeys,
    SecAggError,
    Setup,
    ShareKeysReply,
    ShareKeysRequest,
    make_params,
)
from fedguard.transport import decode_secagg, encode_secagg

NAMES = ("node-a", "node-b", "node-c")


@pytest.fixture
def demo(tmp_path: Path):
    return write_federation(out=tmp_path / "demo", nodes=3, rounds=1)


def _rewrite(toml: Path, pattern: str, replacement: str) -> None:
    text = toml.read_text()
    new = re.sub(pattern, replacement, text, count=1, flags=re.MULTILINE)
    assert new != text
    toml.write_text(new)


def test_the_demo_writes_a_roster_of_every_node_key(demo):
    cfg = load_node_config(demo.nodes[0])
    roster = cfg.secagg.roster
    assert roster is not None and roster.is_dir()
    assert sorted(p.name for p in roster.iterdir()) == [f"{n}.pub" for n in NAMES]
    assert cfg.secagg.max_colluding_nodes == 0


def _ed25519_line() -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    ssh = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return ssh.decode() + " intruder\n"


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        ("file", r"secagg\.roster: expected a folder of NAME\.pub node keys, got '.*node\.toml'"),
        ("ed25519", r"secagg\.roster: expected EC P-384 OpenSSH public keys .*, got '.*x\.pub"),
        ("bad-name", r"secagg\.roster: expected NAME\.pub files, NAME a letter or digit"),
        ("own-missing", r"secagg\.roster: expected a folder holding this node's own public key"),
        ("own-wrong", r"secagg\.roster: expected a folder holding this node's own public key"),
        ("colluding", r"secagg\.max-colluding-nodes: expected an integer >= 0, got -1"),
    ],
)
def test_a_bad_roster_is_one_line_naming_file_key_and_value(demo, spoil, message):
    toml = demo.nodes[0]
    roster = load_node_config(toml).secagg.roster
    assert roster is not None
    if spoil == "file":
        _rewrite(toml, r'^roster = ".*"$', f'roster = "{toml}"')
    elif spoil == "ed25519":
        (roster / "x.pub").write_text(_ed25519_line())
    elif spoil == "bad-name":
        shutil.copy(roster / "node-b.pub", roster / "-b.pub")
    elif spoil == "own-missing":
        (roster / "node-a.pub").unlink()
    elif spoil == "own-wrong":  # node-a.pub holds another node's key (moved: not twice)
        shutil.move(roster / "node-b.pub", roster / "node-a.pub")
    else:
        _rewrite(toml, r"^max-colluding-nodes = 0$", "max-colluding-nodes = -1")
    with pytest.raises(ConfigError, match=message) as caught:
        load_node_config(toml)
    assert "\n" not in str(caught.value) and str(toml.resolve()) in str(caught.value)


def test_a_relative_roster_is_read_next_to_node_toml(demo):
    toml = demo.nodes[1]
    _rewrite(toml, r'^roster = ".*"$', 'roster = "roster"')
    assert load_node_config(toml).secagg.roster == toml.parent / "roster"


def _request(server_round: int = 1) -> TrainRequest:
    return TrainRequest(
        server_round=server_round,
        local_epochs=1,
        batch_size=32,
        lr=0.1,
        max_grad_norm=0.5,
        total_rounds=1,
        federation="demo",
        model="logreg",
    )


def _setup(names: tuple[str, ...], slot: int = 1, *, max_colluding: int = 0) -> bytes:
    params = make_params(
        run="demo",
        server_round=1,
        cohort=len(names),
        clip_range=1.0,
        bits=16,
        weight_cap=1,
        dropout_tolerance=0.34,
        graph_seed=1,
        max_colluding=max_colluding,
    )
    return encode_secagg(Setup(params=dataclasses.replace(params, names=names), slot=slot))


def test_a_node_without_a_roster_refuses_a_secure_round_before_training(demo):
    toml = demo.nodes[0]
    _rewrite(toml, r'^roster = ".*"\n', "")
    node = NodeSecAgg(config=load_node_config(toml))
    with pytest.raises(PolicyRefusalError, match=r"^node\.toml \[secagg\] roster: not set; ") as e:
        node.check_request(setup_bytes=_setup(NAMES), request=_request())
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("names", "slot", "message"),
    [
        (NAMES, 2, r"gave slot 2 to 'node-b', but this node is 'node-a'"),
        (("node-b", "node-a", "node-c"), 1, r"gave slot 1 to 'node-b'"),
        (("node-a", "node-b", "node-z"), 1, r"node 'node-z' is not in this node's roster"),
        ((), 1, r"gave slot 1 to 'no name'"),
    ],
    ids=["another-slot", "swapped", "stranger", "unnamed"],
)
def test_a_node_refuses_a_session_that_names_it_wrongly(demo, names, slot, message):
    node = NodeSecAgg(config=load_node_config(demo.nodes[0]))
    if not names:
        params = make_params(
            run="demo",
            server_round=1,
            cohort=3,
            clip_range=1.0,
            bits=16,
            weight_cap=1,
            dropout_tolerance=0.34,
            graph_seed=1,
        )
        setup = encode_secagg(Setup(params=params, slot=slot))
    else:
        setup = _setup(names, slot)
    with pytest.raises(PolicyRefusalError, match=message):
        node.check_request(setup_bytes=setup, request=_request())


def test_a_node_refuses_a_cohort_too_small_for_its_quorum(demo):
    toml = demo.nodes[0]
    _rewrite(toml, r"^max-colluding-nodes = 0$", "max-colluding-nodes = 3")
    node = NodeSecAgg(config=load_node_config(toml))
    with pytest.raises(PolicyRefusalError, match=r"cannot reach the quorum of 4 signatures"):
        node.check_request(setup_bytes=_setup(NAMES, max_colluding=3), request=_request())
    # The right session passes every identity check.
    ok = NodeSecAgg(config=load_node_config(demo.nodes[1]))
    assert ok.check_request(setup_bytes=_setup(NAMES, 2), request=_request()) is not None


def test_a_node_is_who_its_key_says_whatever_its_node_toml_name(demo):
    """node.toml's name only labels lines (the server names nodes by their enrolled key):
    node-b's key calling itself node-a is node-b in every session, never node-a."""
    toml = demo.nodes[1]
    _rewrite(toml, r'^name = "node-b"$', 'name = "node-a"')
    node = NodeSecAgg(config=load_node_config(toml))
    assert node.check_request(setup_bytes=_setup(NAMES, 2), request=_request()) is not None
    with pytest.raises(
        PolicyRefusalError, match=r"gave slot 1 to 'node-a', but this node is 'node-b'"
    ):
        node.check_request(setup_bytes=_setup(NAMES, 1), request=_request())


def _full_session(nodes, params, seed, survivors):
    """Stages 0-3 of one session for every node; the consistency stage asks `survivors`
    of node 1 and the full set of the others. Returns node 1's answer or its refusal."""
    slots = sorted(nodes)
    rng = np.random.default_rng(seed)
    adv = {
        s: decode_secagg(
            nodes[s].begin(
                setup=Setup(params=params, slot=s), update=[rng.normal(size=4).astype(np.float32)]
            ),
            expect=AdvertiseKeys,
        )
        for s in slots
    }
    shared = {}
    for s in slots:
        keys = tuple(
            NeighbourKeys(slot=o, encryption_key=adv[o].encryption_key,
                          masking_key=adv[o].masking_key, signature=adv[o].signature)
            for o in slots if o != s
        )  # fmt: skip
        shared[s] = decode_secagg(
            nodes[s].step(encode_secagg(ShareKeysRequest(neighbours=keys))), expect=ShareKeysReply
        )
    for s in slots:
        inbox = tuple(x for r in shared.values() for x in r.shares if x.receiver == s)
        nodes[s].step(encode_secagg(MaskedInputRequest(shares=inbox)))
    for s in slots[1:]:
        nodes[s].step(encode_secagg(ConsistencyRequest(survivors=tuple(slots))))
    return nodes[1].step(encode_secagg(ConsistencyRequest(survivors=survivors)))


def test_a_node_signs_one_survivor_set_per_context_across_sessions(demo):
    """Red team, #14.6: the context is a digest of the round's parameters, so a round re-run
    with the same parameters (the node retrains: new keys, new session) has the same one.
    Before, a node signed one set per *session*: the server collected a quorum on {1,2,3}
    in one session and on {1,2} in the next, then showed each to half the holders of a
    third session and got seed shares from some, key shares from the others. Now the
    signed set is recorded per context, for good, and a different one is refused."""
    for toml in demo.nodes:
        _rewrite(toml, r"^min-neighbours = 2$", "min-neighbours = 1")
    params = dataclasses.replace(
        make_params(run="demo", server_round=1, cohort=3, clip_range=1.0, bits=16,
                    weight_cap=1, dropout_tolerance=0.34, graph_seed=1),
        names=NAMES,
    )  # fmt: skip
    nodes = {
        s: NodeSecAgg(config=load_node_config(t), examples=1) for s, t in enumerate(demo.nodes, 1)
    }
    for node in nodes.values():
        node.dir.mkdir(parents=True, exist_ok=True)
    first = decode_secagg(_full_session(nodes, params, 1, (1, 2, 3)), expect=ConsistencyReply)
    assert first.slot == 1
    # The same round, the same parameters, a new session: the same set is signed again...
    again = _full_session(nodes, params, 2, (1, 2, 3))
    assert decode_secagg(again, expect=ConsistencyReply).slot == 1
    # ...another set never is, in a new session or a fresh process.
    fresh = {
        s: NodeSecAgg(config=load_node_config(t), examples=1) for s, t in enumerate(demo.nodes, 1)
    }
    with pytest.raises(SecAggError, match="already signed another survivor set for round 1"):
        _full_session(fresh, params, 3, (1, 2))


def test_a_roster_with_one_key_under_two_names_is_refused(demo):
    """Red team, #14.6: one colluding key at two slots signs twice and holds two shares."""
    toml = demo.nodes[0]
    roster = load_node_config(toml).secagg.roster
    assert roster is not None
    shutil.copy(roster / "node-b.pub", roster / "node-x.pub")
    with pytest.raises(
        ConfigError, match=r"one key per node .* got '.*node-x\.pub holds the key of node-b\.pub'"
    ):
        load_node_config(toml)


def test_a_node_refuses_a_threshold_its_colluders_could_meet_alone(demo):
    """Red team, #14.6: with c colluding nodes and t <= c, the colluders (placed by the
    server, which chooses the graph and the slots) hold t shares of a node by themselves."""
    toml = demo.nodes[0]
    _rewrite(toml, r"^max-colluding-nodes = 0$", "max-colluding-nodes = 2")  # q = 3 <= n
    node = NodeSecAgg(config=load_node_config(toml))
    with pytest.raises(
        PolicyRefusalError, match=r"the threshold is 2 shares, but the session assumes up to 2"
    ):
        node.check_request(setup_bytes=_setup(NAMES, max_colluding=2), request=_request())


def test_a_node_refuses_a_session_assuming_fewer_colluders_than_it_does(demo):
    """Second red team, #14.6: each node computed its quorum from its own c, and a node's
    shares are revealed by its neighbours under theirs: a node at c = 2 beside nodes at
    c = 0 lost its update to 2 colluders. Now c travels in the session (bound into its
    context, the same for every node) and a node refuses a session assuming fewer."""
    toml = demo.nodes[0]
    _rewrite(toml, r"^max-colluding-nodes = 0$", "max-colluding-nodes = 1")
    node = NodeSecAgg(config=load_node_config(toml))
    with pytest.raises(PolicyRefusalError, match=r"the session assumes at most 0 colluding "
                       r"nodes, this node's secagg.max-colluding-nodes is 1"):  # fmt: skip
        node.check_request(setup_bytes=_setup(NAMES), request=_request())
    assert node.check_request(setup_bytes=_setup(NAMES, max_colluding=1), request=_request())
