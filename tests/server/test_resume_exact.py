"""A server that crashes and resumes from its checkpoint ends with the model of one that
never crashed.

One seeded federation (digits, 5 virtual clients, 3 sampled per round, DP-SGD, each
client's accountant in its own file) is run twice with the round loop the deployed
ServerApp runs (``run_rounds``) and its checkpointing (``save_round`` / ``resume``):
once straight through, once "crashed" (every object in memory discarded: model, trainer,
server optimiser) and restarted from the checkpoint file alone. The final weights agree
within 1e-6. A restart that drops the server optimiser's state does not, so the check
can tell.
"""

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from fedguard.config import SimulationConfig, load_simulation_config
from fedguard.errors import DataError
from fedguard.files import CHECKPOINT_FILE
from fedguard.fl.data import federated_data, initial_model
from fedguard.fl.local import LocalTrainer
from fedguard.fl.loop import ClientUpdate, Refusal, client_generator, request_for, run_rounds
from fedguard.fl.strategies import FedAdam, FedAvgM, ServerOptimizer
from fedguard.privacy import AccountantStore
from fedguard.server.checkpoint import load_checkpoint, resume, save_round
from fedguard.simulations.virtual_clients import budget_for, client_state_dir
from fedguard.task import evaluate, get_weights, set_weights

DIGEST = "seeded-federation"
ROUNDS, CRASH_AFTER = 6, 3

OPTIMIZERS: dict[str, Callable[[], ServerOptimizer]] = {
    "fedavgm": lambda: FedAvgM(server_lr=1.0, server_momentum=0.9),
    "fedadam": lambda: FedAdam(server_lr=0.05),
}


class CrashError(Exception):
    """The server process dies here."""


def _config(no_dp: bool = False) -> SimulationConfig:
    return load_simulation_config(
        overrides={
            "dataset": "digits",
            "model": "logreg",
            "clients": 5,
            "clients-per-round": 3,
            "rounds": ROUNDS,
            "epsilon": 3.0,
            "no-dp": no_dp,
            "seed": 11,
        }
    )


def server_process(
    config: SimulationConfig,
    *,
    state: Path,
    server: ServerOptimizer,
    crash: Callable[[int, int], None] = lambda _round, _trained: None,
    forget_optimizer: bool = False,
) -> list[np.ndarray]:
    """What one server process does: resume from ``state``'s checkpoint, run to the end.

    ``crash(round, clients trained so far this round)`` may raise :class:`CrashError`.
    """
    torch.set_num_threads(1)
    data = federated_data(config)
    ds = data.dataset
    trainer = LocalTrainer(model=initial_model(config, data), dp=not config.no_dp)
    point = resume(
        state / CHECKPOINT_FILE,
        config_digest=DIGEST,
        weights=get_weights(trainer.model),
        server=server,
    )
    if forget_optimizer:
        server.load_state([])

    def train_cohort(
        server_round: int, cohort: list[int], weights: list[np.ndarray]
    ) -> Iterator[ClientUpdate | Refusal]:
        for trained, cid in enumerate(cohort):
            crash(server_round, trained)
            idx = data.partitions[cid]
            result = trainer.run(
                global_weights=weights,
                x=torch.from_numpy(ds.x_train[idx]),
                y=torch.from_numpy(ds.y_train[idx]),
                request=request_for(config, server_round),
                generator=client_generator(
                    seed=config.seed, server_round=server_round, client_id=cid
                ),
                budget=budget_for(config),
                store=AccountantStore(path=client_state_dir(state, cid) / "accountant.json"),
            )
            yield ClientUpdate(
                client_id=cid,
                weights=result.weights,
                num_examples=result.num_examples,
                train_loss=result.train_loss,
                epsilon=result.epsilon,
            )

    def on_round(record, weights: list[np.ndarray]) -> None:
        save_round(
            state / CHECKPOINT_FILE,
            server_round=record.round,
            config_digest=DIGEST,
            weights=weights,
            server=server,
        )
        crash(record.round + 1, -1)  # -1: between rounds, the checkpoint just written

    x_test, y_test = torch.from_numpy(ds.x_test), torch.from_numpy(ds.y_test)

    def evaluate_global(weights: list[np.ndarray]):
        set_weights(trainer.model, weights)
        return evaluate(model=trainer.model, x=x_test, y=y_test, num_classes=ds.num_classes)

    return run_rounds(
        first_round=point.first_round,
        last_round=config.rounds,
        seed=config.seed,
        num_clients=config.clients,
        cohort_size=config.cohort_size,
        weights=point.weights,
        server=server,
        train_cohort=train_cohort,
        evaluate=evaluate_global,
        on_round=on_round,
        dp=not config.no_dp,
    )


def crash_at(server_round: int, trained: int) -> Callable[[int, int], None]:
    def crash(r: int, t: int) -> None:
        if (r, t) == (server_round, trained):
            raise CrashError(f"killed in round {r} after {t} clients")

    return crash


def max_difference(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    assert [x.shape for x in a] == [y.shape for y in b]
    return max(float(np.max(np.abs(x.astype(np.float64) - y))) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_crash_after_a_checkpoint_then_resume_equals_an_uninterrupted_run(
    tmp_path: Path, optimizer: str
):
    config = _config()
    straight = server_process(config, state=tmp_path / "straight", server=OPTIMIZERS[optimizer]())

    state = tmp_path / "crashed"
    with pytest.raises(CrashError):  # dies right after round CRASH_AFTER's checkpoint
        server_process(
            config,
            state=state,
            server=OPTIMIZERS[optimizer](),
            crash=crash_at(CRASH_AFTER + 1, -1),
        )
    checkpoint = load_checkpoint(state / CHECKPOINT_FILE)
    assert checkpoint is not None and checkpoint.server_round == CRASH_AFTER
    assert checkpoint.velocity, "the server optimiser's state is in the checkpoint"
    resumed = server_process(config, state=state, server=OPTIMIZERS[optimizer]())
    assert max_difference(resumed, straight) <= 1e-6
    # The clients' accountants, on disk, went on across the crash as if there was none.
    for cid in range(config.clients):
        files = [
            client_state_dir(s, cid) / "accountant.json" for s in (state, tmp_path / "straight")
        ]
        loaded = [AccountantStore(path=f).load(method="rdp").events for f in files]
        assert loaded[0] == loaded[1]

    # Control: resuming the weights without the optimiser's state ends elsewhere.
    forgot = tmp_path / "forgot"
    with pytest.raises(CrashError):
        server_process(config, state=forgot, server=OPTIMIZERS[optimizer](), crash=crash_at(4, -1))
    wrong = server_process(
        config, state=forgot, server=OPTIMIZERS[optimizer](), forget_optimizer=True
    )
    assert max_difference(wrong, straight) > 1e-3


def test_a_crash_mid_round_leaves_no_trace_in_the_final_model(tmp_path: Path):
    # Without DP: a client trained in the lost round has no accountant event to refuse
    # over later (deployed nodes resend their stored reply instead; tests/deploy).
    config = _config(no_dp=True)
    straight = server_process(config, state=tmp_path / "straight", server=OPTIMIZERS["fedavgm"]())
    state = tmp_path / "crashed"
    with pytest.raises(CrashError):  # round 4: two of three clients trained, nothing aggregated
        server_process(
            config, state=state, server=OPTIMIZERS["fedavgm"](), crash=crash_at(CRASH_AFTER + 1, 2)
        )
    assert load_checkpoint(state / CHECKPOINT_FILE).server_round == CRASH_AFTER  # type: ignore[union-attr]
    resumed = server_process(config, state=state, server=OPTIMIZERS["fedavgm"]())
    assert max_difference(resumed, straight) <= 1e-6


def test_a_checkpoint_of_another_federation_config_is_refused(tmp_path: Path):
    weights = [np.ones((2, 2), np.float32)]
    save_round(
        tmp_path / CHECKPOINT_FILE,
        server_round=2,
        config_digest="other",
        weights=weights,
        server=FedAvgM(server_momentum=0.9),
    )
    with pytest.raises(DataError, match=r"made with another federation config \(digest other"):
        resume(tmp_path / CHECKPOINT_FILE, config_digest=DIGEST, weights=weights, server=FedAvgM())
    fresh = resume(
        tmp_path / "none" / CHECKPOINT_FILE, config_digest=DIGEST, weights=weights, server=FedAvgM()
    )
    assert fresh.first_round == 1 and fresh.checkpoint is None and fresh.weights is weights
