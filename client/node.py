"""A deployed node: its own data, its own privacy policy, its own state folder.

The server only *asks* (epochs, batch size, learning rate, how many rounds the run plans);
the node decides. It refuses a request that breaks its policy (too many local epochs,
a run that would take it past its epsilon) with a reason the server logs, calibrates its
noise to its own budget, never below its minimum noise multiplier, and counts the
epsilon in its state folder before training (write-ahead). Asked the very same request
again (a server restarted from its checkpoint), it resends its stored reply instead of
training again, so a server crash does not make it spend twice. It does not import Flower.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from fedguard._io import atomic_write_bytes
from fedguard.client.budget import plan_run
from fedguard.client.training import BudgetExceededError, LocalResult, LocalTrainer, PrivacyBudget
from fedguard.deploy_config import NodeConfig, load_node_config
from fedguard.errors import DataError
from fedguard.federation import TrainRequest, load_federated_data
from fedguard.privacy import AccountantStore, GaussianEvent, sample_rate_for, steps_per_epoch
from fedguard.privacy.ledger import LEDGER_FILENAME, Ledger, LedgerEntry
from fedguard.privacy.receipts import PrivacyReceipt, receipt_for
from fedguard.privacy.rng import os_entropy_generator
from fedguard.task import build_model, load_dataset, set_weights

__all__ = ["NodeRuntime", "PolicyRefusalError", "node_runtime", "read_stored_reply"]

_log = logging.getLogger(__name__)

ACCOUNTANT_PREFIX = "accountant-"  # + the data set's fingerprint (16 hex) + ".json"
LAST_REPLY_FILE = "last-reply.safetensors"


class PolicyRefusalError(BudgetExceededError):
    """The request breaks the node's policy (node.toml [privacy])."""


@dataclass
class NodeRuntime:
    config: NodeConfig
    x: torch.Tensor
    y: torch.Tensor
    input_shape: tuple[int, ...]
    num_classes: int
    _trainers: dict[str, LocalTrainer]
    fingerprint: str  # sha256 of the node's training data: the ledger's budget key

    @property
    def state_dir(self) -> Path:
        return self.config.node.state_dir

    def accountant_store(self) -> AccountantStore:
        """The accountant of this node's data set: every run on it composes here."""
        digest = self.fingerprint.removeprefix("sha256:")[:16]
        return AccountantStore(path=self.state_dir / f"{ACCOUNTANT_PREFIX}{digest}.json")

    def train(
        self, *, model_name: str, weights: list[np.ndarray], request: TrainRequest
    ) -> LocalResult:
        """One round under the node's policy; raises ``BudgetExceededError`` to refuse."""
        policy = self.config.privacy
        if request.local_epochs > policy.max_local_epochs:
            raise PolicyRefusalError(
                f"round {request.server_round} refused: local-epochs {request.local_epochs} > "
                f"this node's max-local-epochs {policy.max_local_epochs}"
            )
        budget = PrivacyBudget(
            target_epsilon=policy.max_epsilon,
            delta=policy.delta,
            accountant=policy.accountant,
            planned_rounds=max(1, request.total_rounds),
            min_noise_multiplier=policy.min_noise_multiplier,
        )
        trainer = self._trainers.get(model_name)
        if trainer is None:
            model = build_model(
                name=model_name, input_shape=self.input_shape, num_classes=self.num_classes
            )
            trainer = self._trainers[model_name] = LocalTrainer(model=model, dp=True)
        # Weights that do not fit the model (count, shape, NaN) are refused here, before
        # anything is planned or spent (set_weights checks all before writing any).
        set_weights(trainer.model, weights)
        key = _round_key(request, weights)
        replayed = self._replay(key)
        if replayed is not None:
            return replayed
        n = int(self.x.shape[0])
        store = self.accountant_store()
        plan = plan_run(
            state_dir=self.state_dir,
            run=request.run_key,
            fingerprint=self.fingerprint,
            history=store.load(method=policy.accountant),
            round_event=GaussianEvent(
                noise_multiplier=1.0,
                sample_rate=sample_rate_for(num_examples=n, batch_size=request.batch_size),
                steps=request.local_epochs
                * steps_per_epoch(num_examples=n, batch_size=request.batch_size),
            ),
            planned_rounds=max(1, request.total_rounds),
            max_epsilon=policy.max_epsilon,
            run_epsilon=policy.run_epsilon,
            min_noise_multiplier=policy.min_noise_multiplier,
            max_noise_multiplier=policy.max_noise_multiplier,
            delta=policy.delta,
        )
        # Deployed nodes draw noise and batches from OS entropy: the generator's whole
        # state, not a seed (torch keeps only 32 bits of one: a stream one could search).
        generator = os_entropy_generator()
        ledger = Ledger(path=self.state_dir / LEDGER_FILENAME)
        pending: list[LedgerEntry] = []

        def record_pending(event: GaussianEvent, epsilon_after: float) -> None:
            # Written (and fsynced) before the first gradient step: a crash mid-round
            # leaves a pending entry, which counts as spent.
            pending.append(
                ledger.begin(
                    run=request.run_key,
                    server_round=request.server_round,
                    dataset_fingerprint=self.fingerprint,
                    sample_rate=event.sample_rate,
                    noise_multiplier=event.noise_multiplier,
                    steps=event.steps,
                    max_grad_norm=request.max_grad_norm,
                    epsilon_after=epsilon_after,
                    delta=policy.delta,
                    accountant=policy.accountant,
                )
            )

        result = trainer.run(
            global_weights=weights,
            x=self.x,
            y=self.y,
            request=request,
            generator=generator,
            budget=budget,
            store=store,
            on_spend=record_pending,
            noise_multiplier=plan.noise_multiplier,
        )
        for entry in pending:
            ledger.commit(entry)
        self._remember(key, result)
        return result

    def receipt(self, request: TrainRequest) -> PrivacyReceipt | None:
        """The privacy receipt of ``request``'s round, from this node's ledger."""
        return receipt_for(
            Ledger(path=self.state_dir / LEDGER_FILENAME),
            run=request.run_key,
            server_round=request.server_round,
        )

    def _replay(self, key: str) -> LocalResult | None:
        """The reply already sent for this very request (a restarted server asking again).

        Sending the same released output twice costs no privacy; training again would. A
        stored reply that cannot be read is ignored (with a warning): the node trains
        again, and the ledger counts that round as it counts any other.
        """
        path = self.state_dir / LAST_REPLY_FILE
        try:
            return read_stored_reply(path, key=key)
        except DataError as exc:
            _log.warning("%s; ignored: this round is trained (and counted) again", exc)
            return None

    def _remember(self, key: str, result: LocalResult) -> None:
        fields = {k: v for k, v in dataclasses.asdict(result).items() if k != "weights"}
        tensors = {f"{i:05d}": np.ascontiguousarray(w) for i, w in enumerate(result.weights)}
        atomic_write_bytes(
            self.state_dir / LAST_REPLY_FILE,
            st_save(tensors, metadata={"key": key, "result": json.dumps(fields)}),
            mode=0o600,
        )


_REPLY_FIELDS = {
    "num_examples": "int",
    "train_loss": "float",
    "steps": "int",
    "epsilon": "float?",
    "delta": "float?",
    "noise_multiplier": "float?",
    "sample_rate": "float?",
}


def read_stored_reply(path: Path, *, key: str) -> LocalResult | None:
    """The reply stored in ``path`` (safetensors) if it answers request ``key``.

    None when there is no file or it answers another request; ``DataError`` naming the
    file when it is not a reply this node wrote.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None

    def bad(why: str) -> DataError:
        return DataError(f"{path}: unreadable stored reply ({why})")

    if len(data) < 8:
        raise bad(f"{len(data)} bytes, no safetensors header")
    (size,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8 : 8 + size]) if size <= len(data) - 8 else None
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        raise bad(f"header is not JSON: {' '.join(str(exc).split())[:120]}") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or not isinstance(meta.get("key"), str):
        raise bad("no request key in its metadata")
    if meta["key"] != key:
        return None
    try:
        tensors = st_load(data)
        fields = json.loads(str(meta.get("result")))
    except (SafetensorError, ValueError, RecursionError) as exc:
        raise bad(" ".join(str(exc).split())[:200]) from None
    if not isinstance(fields, dict) or set(fields) != set(_REPLY_FIELDS):
        raise bad(f"expected the fields {sorted(_REPLY_FIELDS)}")
    for name, kind in _REPLY_FIELDS.items():
        v = fields[name]
        if kind == "int":
            ok = isinstance(v, int) and not isinstance(v, bool) and v >= 0
        else:
            number = isinstance(v, int | float) and not isinstance(v, bool)
            ok = (number and math.isfinite(v)) or (kind == "float?" and v is None)
        if not ok:
            raise bad(f"{name}: expected a finite {kind.rstrip('?')}, got {v!r}")
    if not tensors or any(t.dtype != np.float32 for t in tensors.values()):
        raise bad("expected float32 weight arrays")
    return LocalResult(weights=[tensors[k] for k in sorted(tensors)], **fields)


def _round_key(request: TrainRequest, weights: list[np.ndarray]) -> str:
    """Identifies a request: federation, round, training settings and global weights."""
    h = hashlib.sha256(repr(dataclasses.astuple(request)).encode())
    for w in weights:
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=2)
def node_runtime(config_path: str) -> NodeRuntime:
    """Load the node's config and data once per process (the ClientApp is rebuilt per
    message; this cache only saves the loading, never privacy state)."""
    cfg = load_node_config(Path(config_path))
    cfg.node.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    d = cfg.data
    if d.num_partitions is not None and d.partition_id is not None:
        fed = load_federated_data(
            dataset=d.dataset,
            target=d.target,
            seed=d.seed,
            clients=d.num_partitions,
            scheme="iid",
            alpha=1.0,
        )
        ds = fed.dataset
        idx = fed.partitions[d.partition_id]
        x, y = ds.x_train[idx], ds.y_train[idx]
    else:
        ds = load_dataset(name=d.dataset, seed=d.seed, target=d.target)
        x, y = ds.x_train, ds.y_train
    return NodeRuntime(
        config=cfg,
        x=torch.from_numpy(x),
        y=torch.from_numpy(y),
        input_shape=ds.input_shape,
        num_classes=ds.num_classes,
        _trainers={},
        fingerprint=_fingerprint(x, y),
    )


def _fingerprint(x: np.ndarray, y: np.ndarray) -> str:
    h = hashlib.sha256()
    for array in (x, y):
        h.update(str((array.dtype.str, array.shape)).encode())
        h.update(np.ascontiguousarray(array).tobytes())
    return "sha256:" + h.hexdigest()
