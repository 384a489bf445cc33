"""SecAgg+ settings and the weight cap in one home (#20.3): the simulation and the
deployed server build the same round parameters from the same settings, and with
client-level DP neither lets an input weigh more than one update."""

from pathlib import Path

from fedguard.config import SimulationConfig
from fedguard.deploy_config import load_federation_config
from fedguard.privacy.secagg import SecAggSettings
from fedguard.server.deploy_parts import secagg_params
from fedguard.simulations.secure_cohort import secagg_settings


def _federation(tmp_path: Path, extra: str = "") -> Path:
    toml = tmp_path / "federation.toml"
    toml.write_text(
        '[federation]\nname = "simulation"\nseed = 7\nweight-cap = 40\n[server]\n'
        "insecure = true\n[secagg]\nenabled = true\nclip-range = 0.5\nbits = 12\n" + extra
    )
    return toml


def test_both_engines_derive_the_same_round_parameters(tmp_path: Path):
    cfg = load_federation_config(_federation(tmp_path))
    sim = SimulationConfig(
        out=tmp_path / "sim", clients=8, secagg=True, secagg_clip_range=0.5, secagg_bits=12,
        seed=7,
    )  # fmt: skip
    for cohort in (3, 8):
        deployed = secagg_params(cfg, 2, cohort)
        simulated = secagg_settings(sim).for_round(server_round=2, cohort=cohort, weight_cap=40)
        assert simulated == deployed
        assert simulated.context() == deployed.context()


def test_client_level_dp_caps_every_weight_at_one(tmp_path: Path):
    # Attack: a node with many records would weigh its clipped update by its count and
    # move the sum far beyond the clip norm the client-level noise is sized for.
    cfg = load_federation_config(
        _federation(tmp_path, "[client-dp]\nenabled = true\nclip-norm = 0.5\n")
    )
    assert secagg_params(cfg, 1, 4).weight_cap == 1
    sim = SimulationConfig(out=tmp_path / "sim", clients=4, secagg=True, client_dp=True)
    assert secagg_settings(sim).for_round(server_round=1, cohort=4, weight_cap=900).weight_cap == 1
    plain = SecAggSettings(run="r", clip_range=1.0, bits=8, dropout_tolerance=0.4, graph_seed=0)
    assert plain.for_round(server_round=1, cohort=4, weight_cap=900).weight_cap == 900
