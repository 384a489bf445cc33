"""federation.toml / node.toml: one-line errors naming file, key, allowed and received."""

from pathlib import Path

import pytest
from harness.federation_files import write_federation

from fedguard.deploy_config import load_federation_config, load_node_config
from fedguard.errors import ConfigError
from fedguard.fl.limits import MAX_UPDATE_NORM


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    return write_federation(out=tmp_path_factory.mktemp("cfg") / "demo", nodes=2, rounds=2)


def test_max_update_norm_defaults_and_leaves_the_checkpoint_digest_alone(layout, tmp_path):
    fed = load_federation_config(layout.federation)
    assert fed.federation.max_update_norm == MAX_UPDATE_NORM == 1e4
    tighter = tmp_path / "federation.toml"
    tighter.write_text(
        layout.federation.read_text().replace("rounds = 2", "rounds = 2\nmax-update-norm = 5.0")
    )
    again = load_federation_config(tighter)
    assert again.federation.max_update_norm == 5.0
    assert again.digest() == fed.digest()  # a safety bound: a run may resume with another


def test_demo_configs_load(layout):
    fed = load_federation_config(layout.federation)
    node = load_node_config(layout.nodes[0])
    assert fed.federation.rounds == 2 and fed.server.ca_cert.exists()
    assert node.privacy.max_epsilon == 3.0 and node.node.private_key.exists()


@pytest.mark.parametrize(
    ("old", "new", "fragments"),
    [
        ("rounds = 2", "rounds = 0", ["federation.rounds", ">= 1", "0"]),
        ("rounds = 2", "roundz = 2", ["federation.roundz", "a known key", "rounds"]),
        ("rounds = 2", 'rounds = "two"', ["federation.rounds", "an integer", "'two'"]),
        ('model = "logreg"', 'model = "logreg"\nfraction = 1.5', ["fraction"]),
        ("fleet-port = ", "fleet-port = 70000\nold-fleet-port = ", ["server.old-fleet-port"]),
        ("fleet-port = ", "fleet-port = 70000 #", ["server.fleet-port", "1-65535", "70000"]),
        ("bits = 16", "bits = 40", ["secagg.bits", "[1, 30]", "40"]),
        ("dropout-tolerance = 0.34", "dropout-tolerance = 0.2", ["secagg.dropout-tolerance"]),
        ("min-nodes = 2", "min-nodes = 1", ["federation.min-nodes", ">= 2", "secure"]),
        ("[secagg]", "[secagg]\nsecret = 1", ["secagg.secret", "a known key"]),
        ("rounds = 2", "rounds = 2\nmax-update-norm = 0", ["federation.max-update-norm", "> 0"]),
        ("rounds = 2", "rounds = 2\nmax-update-norm = inf", ["max-update-norm", "finite", "inf"]),
    ],
)
def test_federation_errors(layout, tmp_path: Path, old, new, fragments):
    bad = tmp_path / "federation.toml"
    bad.write_text(layout.federation.read_text().replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load_federation_config(bad)
    message = str(info.value)
    assert "\n" not in message and str(bad) in message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize(
    ("old", "new", "fragments"),
    [
        ("max-epsilon = 3.0", "max-epsilon = -1", ["privacy.max-epsilon", "(0, 100]", "-1"]),
        # #15.5: accepted before, and then nothing was bounded.
        ("max-epsilon = 3.0", "max-epsilon = 1e308", ["privacy.max-epsilon", "1e+308"]),
        ("delta = 1e-05", "delta = 2.0", ["privacy.delta", "(0, 0.01]", "2.0"]),
        ('server = "', 'server = "127.0.0.1:notaport" #"', ["node.server", "notaport"]),
        ('server = "', 'server = "127.0.0.1:99999" #"', ["node.server", "1-65535", "99999"]),
        ('accountant = "rdp"', 'accountant = "gdp"', ["privacy.accountant", "rdp", "prv"]),
        ("partition-id = 0", "partition-id = 5", ["data.partition-id", "[0, 2)", "5"]),
        ("[privacy]", "[privacy]\nbudget = 1", ["privacy.budget", "a known key"]),
        ("min-neighbours = 1", "min-neighbours = 0", ["secagg.min-neighbours", ">= 1", "0"]),
        ("required = true", "required = 1", ["secagg.required", "true or false", "1"]),
    ],
)
def test_node_errors(layout, tmp_path: Path, old, new, fragments):
    text = layout.nodes[0].read_text()
    assert old in text
    bad = tmp_path / "node.toml"
    bad.write_text(text.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load_node_config(bad)
    message = str(info.value)
    assert "\n" not in message and str(bad) in message
    for fragment in fragments:
        assert fragment in message


def test_missing_key_file_is_named(layout, tmp_path: Path):
    bad = tmp_path / "node.toml"
    text = layout.nodes[0].read_text()
    key = next(line for line in text.splitlines() if line.startswith("private-key"))
    bad.write_text(text.replace(key, 'private-key = "/nonexistent/key"'))
    with pytest.raises(ConfigError, match=r"node\.private-key: expected an existing file"):
        load_node_config(bad)


def test_a_state_dir_that_is_a_file_is_named(layout, tmp_path: Path):
    """#15.5: a state-dir that is a file gave a raw traceback."""
    taken = tmp_path / "state-file"
    taken.write_text("")
    bad = tmp_path / "node.toml"
    text = layout.nodes[0].read_text()
    state = next(line for line in text.splitlines() if line.startswith("state-dir"))
    bad.write_text(text.replace(state, f'state-dir = "{taken}"'))
    with pytest.raises(ConfigError, match=r"node\.state-dir: expected a folder"):
        load_node_config(bad)
