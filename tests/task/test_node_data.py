"""A deployed node's loading (#13 point 1): every record trains; a validation share is
decided per record under the node's secret; dp-scaled columns come with their event."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedguard.client.node_data import dp_scale, load_node_dataset
from fedguard.deploy_config import load_node_config
from fedguard.errors import ConfigError
from fedguard.privacy import Accountant, GaussianEvent
from fedguard.task import load_dataset

SCHEMA = """
[target]
column = "y"
labels = [0, 1]
[columns.rid]
type = "identifier"
[columns.v]
type = "numeric"
range = [0, 100]
scaling = "dp"
"""


def _node(tmp_path: Path, rows: int, data: str = "", state: str = "state") -> Path:
    csv = tmp_path / "records.csv"
    rng = np.random.default_rng(0)
    csv.write_text(
        "rid,v,y\n" + "".join(f"r{i},{rng.uniform(20, 60):.3f},{i % 2}\n" for i in range(rows))
    )
    (tmp_path / "features.toml").write_text(SCHEMA)
    toml = tmp_path / "node.toml"
    toml.write_text(
        f'[node]\nname = "n"\nserver = "127.0.0.1:9"\ninsecure = true\n'
        f'state-dir = "{tmp_path / state}"\n\n[data]\ndataset = "{csv}"\n'
        f'schema = "features.toml"\n{data}'
    )
    return toml


def test_every_record_trains_by_default(tmp_path: Path) -> None:
    ds = load_node_dataset(load_node_config(_node(tmp_path, 50)))
    assert len(ds.y_train) == 50 and len(ds.y_test) == 0
    assert ds.dp_scaling is not None and ds.dp_scaling.names == ("v",)


def test_validation_share_moves_no_other_record_and_depends_on_the_node_secret(
    tmp_path: Path,
) -> None:
    cfg = load_node_config(_node(tmp_path, 400, "validation-share = 0.25\n"))
    before = load_node_dataset(cfg)
    assert 50 < len(before.y_test) < 150 and len(before.y_train) + len(before.y_test) == 400
    keys = {bytes(k) for k in before.train_record_keys}  # type: ignore[union-attr]
    # Remove one training record from the file: no other record changes side.
    csv = tmp_path / "records.csv"
    lines = csv.read_text().splitlines()
    every = load_dataset(name=str(csv), seed=0, schema=tmp_path / "features.toml", split="none")
    first_train = next(
        i
        for i, k in enumerate(every.train_record_keys)
        if bytes(k) in keys  # type: ignore[union-attr]
    )
    del lines[first_train + 1]
    csv.write_text("\n".join(lines) + "\n")
    after = load_node_dataset(cfg)
    after_keys = {bytes(k) for k in after.train_record_keys}  # type: ignore[union-attr]
    assert after_keys < keys and len(keys - after_keys) == 1
    assert len(after.y_test) == len(before.y_test)
    # Another node (another secret) holds out other records.
    other = load_node_dataset(
        load_node_config(_node(tmp_path, 400, "validation-share = 0.25\n", "s2"))
    )
    assert {bytes(k) for k in other.train_record_keys} != keys  # type: ignore[union-attr]


def test_dp_scale_returns_scaled_data_and_the_event_to_charge(tmp_path: Path) -> None:
    ds = load_node_dataset(load_node_config(_node(tmp_path, 2000)))
    scaled, event = dp_scale(ds, noise_multiplier=1.0, rng=np.random.default_rng(0))
    assert event == GaussianEvent(noise_multiplier=1.0, sample_rate=1.0, steps=1)
    assert scaled.dp_scaling is None
    # Uniform(20, 60): mean 40, std ~11.5; the noise on 2000 records is small.
    assert abs(float(scaled.x_train[:, 0].mean())) < 0.1
    assert abs(float(scaled.x_train[:, 0].std()) - 1.0) < 0.1
    acc = Accountant(method="rdp")
    acc.compose(event)
    assert acc.get_privacy_spent(delta=1e-5).epsilon > 0
    assert dp_scale(scaled, noise_multiplier=1.0, rng=np.random.default_rng(0))[1] is None


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("validation-share = 1.0\n", "data.validation-share"),
        ('schema = "nope.toml"\n', "data.schema"),
    ],
)
def test_bad_data_keys_name_file_and_key(tmp_path: Path, line: str, key: str) -> None:
    toml = _node(tmp_path, 5, line)
    if "schema" in line:  # replace the good schema line
        text = toml.read_text().replace('schema = "features.toml"\n', "")
        toml.write_text(text)
    with pytest.raises(ConfigError, match=f"{key}: expected"):
        load_node_config(toml)
