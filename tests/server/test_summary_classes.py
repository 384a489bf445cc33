"""The deployed server stores the mapping of labels to classes in summary.json (#17.4),
from the federation's schema ([target] labels) or, without one, the class ids; and
`fedguard server` prints it (tests/deploy/test_node_says.py)."""

from pathlib import Path

from fedguard.federation_config import (
    FederationConfig,
    FederationSection,
    ServerNetwork,
    TaskSection,
    TrainingSection,
)
from fedguard.server.deploy_parts import run_summary
from fedguard.task import load_schema


def _summary(tmp_path: Path, schema: Path | None, num_classes: int) -> dict:
    cfg = FederationConfig(
        source=tmp_path / "federation.toml",
        federation=FederationSection(rounds=1, min_nodes=1),
        task=TaskSection(model="logreg", input_shape=[2], num_classes=num_classes, schema=schema),
        training=TrainingSection(),
        server=ServerNetwork(),
        state_dir=tmp_path / "state",
        out=tmp_path / "results",
    )
    last = {"round": 1, "accuracy": 0.5, "epsilon_by_node": {}}
    return run_summary(
        cfg, run_id="r1", last=last, nodes=["bank-a"], seconds=1.0,
        client_level=lambda _r: None, cohort_size=1,  # type: ignore[arg-type,return-value]
    )  # fmt: skip


def test_summary_names_each_class_as_the_schema_declares_it(tmp_path: Path):
    schema = tmp_path / "features.toml"
    schema.write_text(
        '[target]\ncolumn = "default"\nlabels = ["No", "Yes"]\n'
        '[columns.balance]\ntype = "numeric"\ncentre = 0\nscale = 1\n'
        '[columns.student]\ntype = "binary"\nvalues = ["n", "y"]\n'
    )
    assert load_schema(schema).labels == ("No", "Yes")  # the schema the server reads
    assert _summary(tmp_path, schema, 2)["classes"] == ["No", "Yes"]
    assert _summary(tmp_path, None, 3)["classes"] == ["0", "1", "2"]
