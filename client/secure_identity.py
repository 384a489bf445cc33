"""Who a deployed node is in a secure round: its name, its roster, its quorum (#14.6).

Checked before training, so a session the node would refuse costs it nothing: the server
must have named this node's slot with this node's roster name (the name of its key: a
node is who its key says, as for the server), every name must be in the node's
roster (node.toml ``[secagg] roster``, every node's key received out of band) and the
cohort must be able to reach the quorum the node's ``max-colluding-nodes`` requires.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey

from fedguard.deploy.roster import load_node_key, load_roster, own_roster_name
from fedguard.deploy_config import NodeConfig
from fedguard.errors import PolicyRefusalError
from fedguard.privacy.secagg import SecAggError, Setup, quorum

__all__ = ["check_identity", "node_roster"]


def check_identity(config: NodeConfig, setup: Setup) -> None:
    """The session's names against this node's name, key and roster (before training)."""
    p, policy = setup.params, config.secagg
    r = p.server_round
    if policy.roster is None:
        raise PolicyRefusalError(
            f"node.toml [secagg] roster: not set; round {r} refused: without the nodes' "
            "public keys from outside the server, a server could substitute keys and lie "
            "about who dropped out unnoticed (set it to a folder of NAME.pub node keys)"
        )
    if config.node.private_key is None:
        raise PolicyRefusalError(
            f"node.toml [node] private-key: not set; round {r} refused: secure "
            "aggregation signs with the node key"
        )
    roster = node_roster(config)
    # This node is who its key says (the server names nodes by their enrolled key).
    key = load_node_key(config.node.private_key, source=config.source)
    me = own_roster_name(roster, key) or config.node.name
    if len(p.names) != p.cohort or p.names[setup.slot - 1] != me:
        named = p.names[setup.slot - 1] if len(p.names) == p.cohort else "no name"
        raise PolicyRefusalError(
            f"round {r} refused: the server gave slot {setup.slot} to {named!r}, "
            f"but this node is {me!r}"
        )
    strangers = [n for n in p.names if n not in roster]
    if strangers:
        raise PolicyRefusalError(
            f"round {r} refused: node {strangers[0]!r} is not in this node's roster "
            f"({policy.roster}); its signatures could not be checked"
        )
    c = policy.max_colluding_nodes
    if p.max_colluding < c:
        # Each holder of this node's shares reveals under the session's quorum: a session
        # assuming fewer colluders than this node does would not protect it.
        raise PolicyRefusalError(
            f"round {r} refused: the session assumes at most {p.max_colluding} colluding "
            f"nodes, this node's secagg.max-colluding-nodes is {c} (set [secagg] "
            "max-colluding-nodes in federation.toml to at least the largest of the nodes')"
        )
    q = quorum(p)
    if q > p.cohort:
        raise PolicyRefusalError(
            f"round {r} refused: a cohort of {p.cohort} cannot reach the quorum of {q} "
            f"signatures that {p.max_colluding} colluding nodes require"
        )
    if p.threshold <= p.max_colluding:
        # The server chooses the graph and the slots: it can put every colluder beside one
        # node, and c nodes holding t shares of it unmask it without anyone else.
        raise PolicyRefusalError(
            f"round {r} refused: the threshold is {p.threshold} shares, but the session "
            f"assumes up to {p.max_colluding} colluding nodes: they alone could hold enough "
            "shares to unmask a node"
        )


def node_roster(config: NodeConfig) -> dict[str, EllipticCurvePublicKey]:
    """The node's roster ([secagg] roster), read afresh (each stage is a fresh process)."""
    policy, node = config.secagg, config.node
    if policy.roster is None:
        raise SecAggError("node.toml [secagg] roster: not set; no secure round")
    return load_roster(
        policy.roster, source=config.source, own_name=node.name, own_key=node.private_key
    )
