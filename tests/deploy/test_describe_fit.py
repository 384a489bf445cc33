"""#14.5, the node's side: a real deployed node (its node.toml, data and ClientApp)
describes what the server needs to check it against the task, and nothing that gives
its records away (no count, no label set).

Before: a node described only its name; the server learnt that its data did not fit
the task when it failed (or, worse, trained on) every round.
"""

from __future__ import annotations

from deploy.test_secure_round import Federation, fed, identity  # same federation, fixtures
from flwr.app import ConfigRecord, Message, RecordDict

from fedguard.client.node import node_runtime
from fedguard.deploy_config import load_federation_config
from fedguard.server.cohort import check_cohort

__all__ = ["fed", "identity"]  # fixtures, imported for pytest


def _describe(fed: Federation, num_classes: int | None) -> dict:
    task = {} if num_classes is None else {"task": ConfigRecord({"num-classes": num_classes})}
    msg = Message(RecordDict(task), dst_node_id=fed.node_of[0], message_type="query.describe")
    msg.metadata.__dict__["_message_id"] = msg.object_id
    return dict(fed.grid.deliver(msg).content.config_records["node"])


def test_a_node_describes_its_shape_labels_schema_and_policy_never_its_count(fed: Federation):
    record = _describe(fed, 10)
    runtime = node_runtime(str(fed.layout.nodes[0]))
    assert record["input-shape"] == list(runtime.input_shape)
    assert record["labels-fit"] is True
    assert record["schema-digest"] == ""  # the digits set has no declared schema
    p = runtime.config.privacy
    assert record["max-local-epochs"] == p.max_local_epochs
    assert record["secagg-required"] == runtime.config.secagg.required
    assert record["secagg-roster"] is (runtime.config.secagg.roster is not None) is True
    assert record["max-colluding-nodes"] == runtime.config.secagg.max_colluding_nodes
    assert "num-examples" not in record
    assert [k for k in record if "label" in k] == ["labels-fit"]
    # Told the task has 3 classes, a node holding digits 0-9 says its labels do not fit.
    assert _describe(fed, 3)["labels-fit"] is False


def test_the_server_leaves_out_a_node_whose_labels_do_not_fit(fed: Federation, tmp_path):
    toml = tmp_path / "federation.toml"
    toml.write_text(
        '[federation]\nname = "x"\n[task]\nmodel = "logreg"\ninput-shape = [1, 8, 8]\n'
        "num-classes = 3\n[server]\ninsecure = true\n"
    )
    cfg = load_federation_config(toml)
    fit, misfits = check_cohort(cfg, {"node-a": _describe(fed, 3)})
    assert fit == [] and misfits[0].reason.startswith("labels outside the task's 3 classes")
