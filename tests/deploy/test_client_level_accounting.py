"""A deployed federation with [client-dp] reports the client-level epsilon of the scheme
it runs (#14.2): real `fedguard server` and `fedguard client` processes, SecAgg+ on; a
simulation of the same settings records the same figures (#20.3: one home)."""

import json
from pathlib import Path

import pytest
from harness.federation_files import write_federation

from fedguard.config import SimulationConfig
from fedguard.privacy.client_dp import client_level_spent
from fedguard.simulations.runner import simulate

pytestmark = pytest.mark.deploy

ROUNDS = 2


def test_deployed_client_level_epsilon_names_its_scheme(tmp_path: Path, processes):
    layout = write_federation(out=tmp_path / "fed", nodes=3, rounds=ROUNDS)
    text = layout.federation.read_text()
    layout.federation.write_text(
        text + "\n[client-dp]\nenabled = true\nclip-norm = 0.5\nnoise-multiplier = 1.0\n"
    )
    names = [t.parent.name for t in layout.nodes]
    server, ready = processes.server(layout, expect=[f"enrolled {n}" for n in names])
    assert ready.wait(timeout=120), "server did not enrol the nodes"
    for toml in layout.nodes:
        processes.client(toml)
    server.wait(timeout=400)
    assert server.returncode == 0
    processes.stop_all()

    rows = [json.loads(x) for x in (layout.results / "metrics.jsonl").read_text().splitlines()]
    # min-nodes = 3 of 3: everyone every round, so no amplification by sampling.
    want = [
        client_level_spent(
            noise_multiplier=1.0, num_clients=3, cohort_size=3, rounds=r, delta=1e-5
        ).epsilon
        for r in range(1, ROUNDS + 1)
    ]
    assert [r["client_epsilon"] for r in rows] == pytest.approx(want, rel=1e-9)
    cdp = json.loads((layout.results / "summary.json").read_text())["client_level_dp"]
    assert cdp["epsilon"] == pytest.approx(want[-1], rel=1e-9)
    assert cdp["accountant"] == "rdp"
    assert cdp["neighbouring"] == "replace-one"
    assert cdp["sampling"] == "all 3 nodes every round (no sampling)"
    assert cdp["noise_multiplier"] == 1.0 and cdp["clip_norm"] == 0.5

    # The other engine, same settings (3 of 3 clients, noise 1.0, clip 0.5, delta 1e-5):
    # both build the one ClientLevelAccounting, so every recorded figure agrees.
    sim = SimulationConfig(
        out=tmp_path / "sim",
        dataset="digits",
        model="logreg",
        clients=3,
        rounds=ROUNDS,
        secagg=True,
        client_dp=True,
        client_clip=0.5,
        client_noise=1.0,
        delta=1e-5,
        accountant="prv",  # the sample-level accountant: not the client-level analysis
    )
    simulate(sim)
    sim_rows = [json.loads(x) for x in (sim.out / "metrics.jsonl").read_text().splitlines()]
    assert [r["client_epsilon"] for r in sim_rows] == [r["client_epsilon"] for r in rows]
    sim_cdp = json.loads((sim.out / "summary.json").read_text())["client_level_dp"]
    for key in ("epsilon", "delta", "rounds", "accountant", "neighbouring", "sampling"):
        assert sim_cdp[key] == cdp[key], key
