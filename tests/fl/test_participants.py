"""One participant record instead of five id maps (#20.4): the lookups agree, and a
record cannot be given twice or changed under the round that holds it."""

import pytest

from fedguard.errors import ConfigError
from fedguard.fl.participants import Participant, Participants

NODES = [("node-a", 101, {"labels-fit": True}), ("node-b", 202, {}), ("node-c", 303, {})]


def test_every_lookup_names_the_same_participant():
    everyone = Participants.enrolled(NODES)
    assert everyone.names == ["node-a", "node-b", "node-c"]
    assert everyone[1].node_id == 202 and everyone.by_node(303) is everyone[2]
    cohort = everyone.cohort([2, 0])  # slots follow the order asked
    assert [cohort.slot(c) for c in (2, 0)] == [1, 2]
    assert cohort.at_slot(1) is everyone[2] and cohort.at_slot(3) is None
    assert cohort.member(0).name == "node-a"
    assert cohort.client_id_of(101) == 0
    # A node not asked this round is nobody in it, though it is in the run.
    assert cohort.by_node(202) is None and cohort.client_id_of(202) == -1
    assert everyone.by_node(999) is None
    assert cohort.without([2]).client_ids == [0] and cohort.without([2]).slot(0) == 1


@pytest.mark.parametrize(
    ("members", "what"),
    [
        # Two records for one Flower node: its replies would count for both names.
        ([("node-a", 1), ("node-b", 1)], "distinct node ids"),
        # Two nodes under one name: one would be charged for the other's epsilon.
        ([("node-a", 1), ("node-a", 2)], "distinct names"),
    ],
)
def test_a_name_or_node_given_twice_is_refused(members, what):
    with pytest.raises(ConfigError, match=what):
        Participants.enrolled([(name, node, {}) for name, node in members])


def test_client_ids_must_be_the_run_s_indices():
    with pytest.raises(ConfigError, match=r"client ids 0\.\.N-1"):
        Participants([Participant(name="node-a", node_id=1, client_id=1)])


def test_a_description_cannot_change_under_the_record():
    said = {"input-shape": [1, 8, 8]}
    p = Participant(name="node-a", node_id=1, client_id=0, description=said)
    said["input-shape"] = [3, 3]  # the dict the node's reply was decoded into
    assert p.description["input-shape"] == [1, 8, 8]
    with pytest.raises(TypeError):
        p.description["labels-fit"] = True  # type: ignore[index]
