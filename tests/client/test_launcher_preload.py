"""What `fedguard client` imports once, before it forks its SuperNode: every module a
node's ClientApps import (each one a fork), for the kind of data the node holds."""

import importlib.util
from pathlib import Path

import pytest

from fedguard.client.fork_preload import preload_modules
from fedguard.deploy_config import load_node_config

COMMON = {"torch", "torch._dynamo", "opacus", "fedguard.client.app"}


def _node(tmp_path: Path, dataset: str) -> Path:
    toml = tmp_path / "node.toml"
    toml.write_text(
        f'[node]\nname = "n"\nserver = "127.0.0.1:9"\ninsecure = true\n'
        f'state-dir = "{tmp_path / "state"}"\nport = 9999\n\n[data]\ndataset = "{dataset}"\n'
    )
    return toml


@pytest.mark.parametrize(
    ("dataset", "loaders"),
    [
        ("digits", {"sklearn.datasets", "sklearn.model_selection"}),
        ("breast_cancer", {"sklearn.datasets", "sklearn.model_selection"}),
        ("fashion_mnist", set()),
        ("records.csv", {"pyarrow.csv", "pyarrow.parquet", "sklearn.model_selection"}),
        ("records.PARQUET", {"pyarrow.csv", "pyarrow.parquet", "sklearn.model_selection"}),
        ("records.npz", {"sklearn.model_selection"}),
    ],
)
def test_a_node_preloads_its_clientapp_and_its_data_loader(tmp_path, dataset, loaders):
    names = preload_modules(load_node_config(_node(tmp_path, dataset)))
    assert set(names) >= COMMON
    assert set(names) - COMMON - {"cryptography.hazmat.backends.openssl"} == loaders
    for name in names:  # a renamed module would only be reported in the node's log
        assert importlib.util.find_spec(name) is not None, name
