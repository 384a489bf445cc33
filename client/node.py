"""A deployed node: its own data, its own privacy policy, its own state folder.

The server only *asks* (epochs, batch size, learning rate, how many rounds the run plans);
the node decides. It refuses a request that breaks its policy (too many local epochs,
a round beyond the rounds its run planned, a round that would take the run past
``run-epsilon`` or any record past ``max-epsilon``) with a one-line reason the server
logs, calibrates its noise to its own budget, never below its minimum noise multiplier,
and writes the round to its ledger before training (write-ahead).

The ledger is the record of reference: what each record has spent is recomputed from the
ledger's events and the per-record index (:mod:`fedguard.privacy.record_budget`); no
accountant file is trusted over it. A round whose ledger entry cannot be written is
neither trained nor charged. One writer: ``budget.lock`` in the state folder is held from
reading the ledger through committing the round, so two processes serialise.

Asked the very same request again (a server restarted from its checkpoint), it resends
its stored reply instead of training again, so a server crash does not make it spend
twice. A round trained for a secure sum whose session ended before this node sent its
masked input released nothing: the next request for another round gives its epsilon back
(a ledger "void" line, :mod:`fedguard.client.void`). It does not import Flower.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save as st_save

from fedguard._io import atomic_write_bytes
from fedguard.client.budget import plan_run
from fedguard.client.events import RUN_DONE, append_event
from fedguard.client.node_data import load_node_dataset
from fedguard.client.released import HeldUpdate, update_digest
from fedguard.client.scaling import release_to_come, scale_records
from fedguard.client.state_lock import hold_lock
from fedguard.client.stored_reply import read_stored_reply
from fedguard.client.stored_reply import round_key as _round_key
from fedguard.client.void import hold, release, settle
from fedguard.deploy_config import NodeConfig, load_node_config
from fedguard.errors import (
    BudgetExceededError,
    DataError,
    PolicyRefusalError,
    RefusalError,
    StateFileError,
)
from fedguard.files import BUDGET_LOCK, INDEX_FILE, LAST_REPLY_FILE, LEDGER_FILE
from fedguard.fl.local import LocalResult, LocalTrainer, PrivacyBudget
from fedguard.fl.loop import TrainRequest
from fedguard.privacy import (
    AccountantStore,
    GaussianEvent,
    sample_rate_for,
    steps_per_epoch,
)
from fedguard.privacy.ledger import Ledger, LedgerEntry, LedgerError
from fedguard.privacy.node_secret import load_node_secret
from fedguard.privacy.receipts import PrivacyReceipt, receipt_for
from fedguard.privacy.record_budget import (
    RecordBudgetError,
    RecordSet,
    RecordSpend,
    index_digest,
    load_index,
    record_set,
    record_spend,
    updated_index,
    write_index,
)
from fedguard.privacy.rng import os_entropy_generator
from fedguard.task import Dataset, load_dataset, load_schema, set_weights
from fedguard.task.builtin import build_task_model
from fedguard.task.lazy_records import LazyDataset, TaskRecords
from fedguard.task.records import record_partition
from fedguard.task.schema import DPScalingPlan

__all__ = [
    "NodeRuntime",
    "fallback_record_keys",
    "node_runtime",
    "read_stored_reply",
]

_log = logging.getLogger(__name__)

ACCOUNTANT_PREFIX = "accountant-"  # + 16 hex of the keyed fingerprint + ".json": a report


@dataclass
class NodeRuntime:
    """A deployed node's data set and the trainers that spend its privacy budget.

    Built once per node process (:func:`node_runtime`) from ``node.toml``: the records,
    loaded and checked against the declared schema; their keys (for the per-record
    budget); any DP scaling still to release. :meth:`train` runs one round under the
    budget lock: ledger entry written and fsynced first, per-record budget checked,
    DP-SGD in secure mode, the reply stored. Every refusal is a
    :class:`~fedguard.errors.RefusalError` whose one line names the reason.
    """

    config: NodeConfig
    x: torch.Tensor | None  # None for a lazy task: ``data`` reads each step's records
    y: torch.Tensor
    input_shape: tuple[int, ...]
    num_classes: int
    _trainers: dict[str, LocalTrainer]
    # sha256 of each training record's raw bytes, (n, 32) uint8; in memory only: on disk
    # and in receipts only keyed digests of them (HMAC under the node's secret).
    record_keys: np.ndarray
    # Columns the schema scales with a DP estimate (client/scaling.py): ``x`` holds them
    # clipped, unscaled, until the node has released (or reloaded) their centre/scale.
    dp_plan: DPScalingPlan | None = None
    schema_digest: str = ""
    # A lazy task's training records (fedguard.task.lazy_records), read per step.
    data: TaskRecords | None = None
    _records: RecordSet | None = dataclasses.field(default=None, init=False, repr=False)
    _scaled: bool = dataclasses.field(default=False, init=False, repr=False)

    @property
    def state_dir(self) -> Path:
        return self.config.node.state_dir

    def records(self) -> RecordSet:
        """This data set's records, keyed with the node's secret (created on first use)."""
        if self._records is None:
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Under the lock: two first processes must not each make (and use) a secret.
            with hold_lock(self.state_dir / BUDGET_LOCK):
                secret = load_node_secret(self.state_dir)
            self._records = record_set(secret=secret, keys=self.record_keys)
        return self._records

    @property
    def fingerprint(self) -> str:
        """The data set's keyed fingerprint ("hmac:" + hex): ledger entries and receipts."""
        return self.records().fingerprint

    def accountant_store(self) -> AccountantStore:
        """A report: the most-spent record's events on this data set, rewritten after each
        round from the ledger. The node never reads it to decide anything."""
        digest = self.fingerprint.removeprefix("hmac:")[:16]
        return AccountantStore(path=self.state_dir / f"{ACCOUNTANT_PREFIX}{digest}.json")

    def train(
        self,
        *,
        model_name: str,
        weights: list[np.ndarray],
        request: TrainRequest,
        secure: bool = False,
    ) -> LocalResult:
        """One round under the node's policy; raises ``BudgetExceededError`` to refuse.

        ``secure``: the update leaves the node only as a masked input of a secure sum (the
        caller's promise), so a round that ends before it is masked is given back. Without
        it the reply counts as released when this returns.
        """
        r, run = request.server_round, request.run_key
        say = functools.partial(append_event, self.state_dir)
        say(
            f"run '{run}' round {r} of {request.total_rounds}: request: "
            f"{request.local_epochs} local epochs, batch {request.batch_size}, lr "
            f"{request.lr:g}, clip {request.max_grad_norm:g}{' (secure sum)' if secure else ''}"
        )
        try:
            return self._train(
                model_name=model_name, weights=weights, request=request, secure=secure
            )
        except RefusalError as exc:
            say(f"run '{run}' round {r}: refused: {str(exc).removeprefix(f'round {r} refused: ')}")
            raise
        except Exception as exc:
            say(f"run '{run}' round {r}: failed: {type(exc).__name__}: {exc}")
            raise

    def _train(
        self,
        *,
        model_name: str,
        weights: list[np.ndarray],
        request: TrainRequest,
        secure: bool,
    ) -> LocalResult:
        policy = self.config.privacy
        if request.local_epochs > policy.max_local_epochs:
            raise PolicyRefusalError(
                f"round {request.server_round} refused: local-epochs {request.local_epochs} > "
                f"this node's max-local-epochs {policy.max_local_epochs}"
            )
        trainer = self._trainers.get(model_name)
        if trainer is None:
            model = build_task_model(
                name=model_name,
                installed=self.config.data.task,
                input_shape=self.input_shape,
                num_classes=self.num_classes,
            )
            trainer = self._trainers[model_name] = LocalTrainer(
                model=model, dp=True, secure_mode=True
            )
        # Weights that do not fit the model (count, shape, NaN) are refused here, before
        # anything is planned or spent (set_weights checks all before writing any).
        set_weights(trainer.model, weights)
        key = _round_key(request, weights)
        records = self.records()
        # One writer: from reading the ledger to committing this round's entry.
        with hold_lock(self.state_dir / BUDGET_LOCK):
            ledger = Ledger(path=self.state_dir / LEDGER_FILE)
            try:  # an earlier round's held update that never left: given back first
                settle(
                    state_dir=self.state_dir,
                    ledger=ledger,
                    keep_key=key,
                    reply_file=LAST_REPLY_FILE,
                )
            except (LedgerError, OSError) as exc:  # it stays spent; this round goes on
                _log.warning("no round given back: %s", " ".join(str(exc).split()))
            replayed = self._replay(key)
            if replayed is not None:
                append_event(
                    self.state_dir,
                    f"run '{request.run_key}' round {request.server_round}: asked again: "
                    "resent the stored reply (nothing trained, nothing spent)",
                )
                if not secure:  # now it leaves alone: never given back
                    release(state_dir=self.state_dir, key=key)
                return replayed
            result, entry = self._train_locked(trainer, records, weights, request, key)
            if secure:
                held = HeldUpdate(
                    key=key,
                    run=request.run_key,
                    server_round=request.server_round,
                    update=update_digest(
                        [w - g for w, g in zip(result.weights, weights, strict=True)]
                    ),
                    pending=entry.hash,
                    pending_seq=entry.seq,
                )
                try:
                    hold(state_dir=self.state_dir, held=held)
                except (DataError, OSError) as exc:  # not held: the round stays spent
                    _log.warning("round kept as spent: %s", " ".join(str(exc).split()))
            return result

    def _train_locked(
        self,
        trainer: LocalTrainer,
        records: RecordSet,
        weights: list[np.ndarray],
        request: TrainRequest,
        key: str,
    ) -> tuple[LocalResult, LedgerEntry]:
        policy = self.config.privacy
        r, run = request.server_round, request.run_key
        method, delta = policy.accountant, policy.delta
        ledger = Ledger(path=self.state_dir / LEDGER_FILE)
        try:
            entries = ledger.entries()
            index, warning = load_index(
                path=self.state_dir / INDEX_FILE, entries=entries, key_check=records.key_check
            )
            spend = record_spend(index=index, warning=warning, records=records, entries=entries)
        except (LedgerError, RecordBudgetError) as exc:
            raise StateFileError(f"round {r} refused: {exc}") from None
        if spend.warning:
            _log.warning("%s", spend.warning)

        # A dp-scaling release still to come is counted in every check below, so a run
        # that cannot fit is refused before the release, and the plan sees it.
        try:
            pre = self._scaling_to_release()
        except DataError as exc:
            raise StateFileError(f"round {r} refused: {exc}") from None

        def lifetime_after(event: GaussianEvent) -> float:
            return spend.epsilon(method=method, delta=delta, extra=(*pre, event))

        def run_after(event: GaussianEvent) -> float:  # this run's events alone, per record
            return spend.epsilon(method=method, delta=delta, extra=(event,), run=run)

        n = len(self.y)
        q = sample_rate_for(num_examples=n, batch_size=request.batch_size)
        steps = request.local_epochs * steps_per_epoch(
            num_examples=n, batch_size=request.batch_size
        )
        try:
            plan = plan_run(
                state_dir=self.state_dir,
                run=run,
                fingerprint=records.fingerprint,
                epsilon_after=lifetime_after,
                run_epsilon_after=run_after,
                round_event=GaussianEvent(noise_multiplier=1.0, sample_rate=q, steps=steps),
                planned_rounds=max(1, request.total_rounds),
                max_epsilon=policy.max_epsilon,
                run_epsilon=policy.run_epsilon,
                min_noise_multiplier=policy.min_noise_multiplier,
                max_noise_multiplier=policy.max_noise_multiplier,
                delta=delta,
                accountant=method,
            )
            event = GaussianEvent(
                noise_multiplier=plan.noise_multiplier, sample_rate=q, steps=steps
            )
            self._check_round(request, plan.planned_rounds, spend.rounds(run=run), run_after(event))
            after = lifetime_after(event)
        except RecordBudgetError as exc:  # group privacy did not converge
            raise BudgetExceededError(f"round {r} refused: {exc}") from None
        if after > policy.max_epsilon:
            raise BudgetExceededError(
                f"round {r} refused: the most-spent record would reach epsilon {after:.4f} > "
                f"this node's max-epsilon {policy.max_epsilon:g} at delta {delta:g} ({method})"
            )
        if pre or self.dp_plan is not None:
            entries, spend = self._scale_locked(ledger, records, entries, spend, pre, r)
        new_index = updated_index(spend=spend, records=records, seq=len(entries)).to_bytes()
        before = ledger.spent(dataset_fingerprint=records.fingerprint)
        try:  # the ledger first: a round it does not hold is neither trained nor charged
            entry = ledger.begin(
                run=run,
                server_round=r,
                dataset_fingerprint=records.fingerprint,
                sample_rate=q,
                noise_multiplier=plan.noise_multiplier,
                steps=steps,
                max_grad_norm=request.max_grad_norm,
                epsilon_after=after,
                delta=delta,
                accountant=method,
                index_digest=index_digest(new_index),
                max_multiplicity=records.max_multiplicity,
            )
        except (LedgerError, OSError) as exc:
            why = " ".join(str(exc).split())
            raise StateFileError(
                f"round {r} refused: the privacy ledger cannot be written ({why}); nothing "
                "was trained or charged"
            ) from None
        try:
            write_index(self.state_dir / INDEX_FILE, new_index)
        except OSError as exc:  # the ledger holds the round: it counts for every record
            _log.warning("%s: not written (%s)", self.state_dir / INDEX_FILE, exc.strerror)
        budget = PrivacyBudget(
            target_epsilon=policy.max_epsilon,
            delta=delta,
            accountant=method,
            planned_rounds=plan.planned_rounds,
            min_noise_multiplier=policy.min_noise_multiplier,
        )
        # Deployed nodes draw noise and batches from OS entropy: the generator's whole
        # state, not a seed (torch keeps only 32 bits of one: a stream one could search).
        result = trainer.run(
            global_weights=weights,
            x=self.x,
            y=None if self.x is None else self.y,
            data=self.data,
            request=request,
            generator=os_entropy_generator(),
            budget=budget,
            charged=event,
        )
        result = dataclasses.replace(result, epsilon=after, delta=delta)
        ledger.commit(entry)
        done = f"; {RUN_DONE} '{run}'" if r >= plan.planned_rounds else ""
        append_event(
            self.state_dir,
            f"run '{run}' round {r}: trained: noise multiplier {plan.noise_multiplier:.4g} "
            f"(the run's plan: {plan.planned_rounds} rounds, epsilon {plan.epsilon_planned:.4g} "
            f"after its last), {steps} steps at sample rate "
            f"{q:.4g}; epsilon {before:.4g} -> {after:.4g} (delta {delta:g}, accountant "
            f"{method}, the most-spent record, every run){done}",
        )
        self._write_report(spend, event)
        self._remember(key, result)
        return result, entry

    def _scaling_to_release(self) -> tuple[GaussianEvent, ...]:
        """The dp-scaling release this round must make first (none if it is stored)."""
        if self.dp_plan is None or self._scaled:
            return ()
        return release_to_come(
            state_dir=self.state_dir,
            plan=self.dp_plan,
            schema_digest=self.schema_digest,
            policy=self.config.privacy,
        )

    def _scale_locked(
        self,
        ledger: Ledger,
        records: RecordSet,
        entries: list[LedgerEntry],
        spend: RecordSpend,
        pre: tuple[GaussianEvent, ...],
        r: int,
    ) -> tuple[list[LedgerEntry], RecordSpend]:
        """Release (charged first) or reload the dp columns' centre/scale; scale ``x``."""
        if self.dp_plan is None or self._scaled or self.x is None:
            return entries, spend
        try:
            scaled = scale_records(
                state_dir=self.state_dir,
                plan=self.dp_plan,
                schema_digest=self.schema_digest,
                policy=self.config.privacy,
                ledger=ledger,
                records=records,
                entries=entries,
                spend=spend,
                pre=pre,
                x=self.x.numpy(),
            )
        except (LedgerError, OSError, DataError) as exc:
            why = " ".join(str(exc).split())
            raise StateFileError(
                f"round {r} refused: the dp scaling was not released ({why})"
            ) from None
        self.x, self._scaled = torch.from_numpy(scaled.x), True
        if not scaled.released_now:
            return entries, spend
        entries = ledger.entries()
        index, warning = load_index(
            path=self.state_dir / INDEX_FILE, entries=entries, key_check=records.key_check
        )
        return entries, record_spend(index=index, warning=warning, records=records, entries=entries)

    def _check_round(
        self, request: TrainRequest, planned: int, trained: int, run_epsilon: float
    ) -> None:
        """A run trains at most its planned rounds, each within ``run-epsilon``."""
        r, run, cap = request.server_round, request.run_key, self.config.privacy.run_epsilon
        why: str | None = None
        kind: type[RefusalError] = PolicyRefusalError
        if max(1, request.total_rounds) != planned:
            why = f"total-rounds {request.total_rounds} differs from the {planned} rounds planned"
        elif r > planned:
            why = f"run {run!r} planned {planned} rounds"
        elif trained >= planned:
            why = f"run {run!r} already trained {trained} rounds of the {planned} it planned"
        elif cap is not None and run_epsilon > cap:
            why = f"run {run!r} would reach epsilon {run_epsilon:.4f} > run-epsilon {cap:g}"
            kind = BudgetExceededError
        if why is not None:
            raise kind(f"round {r} refused: {why}")

    def _write_report(self, spend: RecordSpend, event: GaussianEvent) -> None:
        """Rewrite the accountant report (never read back; losing it loses nothing)."""
        policy = self.config.privacy
        acc = spend.worst(method=policy.accountant, delta=policy.delta, extra=(event,))[1]
        try:
            self.accountant_store().save(acc)
        except OSError as exc:
            _log.warning("%s: report not written (%s)", self.accountant_store().path, exc)

    def receipt(self, request: TrainRequest) -> PrivacyReceipt | None:
        """The privacy receipt of ``request``'s round, from this node's ledger."""
        return receipt_for(
            Ledger(path=self.state_dir / LEDGER_FILE),
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


@functools.lru_cache(maxsize=2)
def node_runtime(config_path: str) -> NodeRuntime:
    """Load the node's config and data once per process (the ClientApp is rebuilt per
    message; this cache only saves the loading, never privacy state)."""
    cfg = load_node_config(Path(config_path))
    cfg.node.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    d = cfg.data
    ds: Dataset | LazyDataset
    if d.num_partitions is not None and d.partition_id is not None:
        # The demo: nodes share one public data set, each taking the records whose keyed
        # hash names its share (per record: one record added moves no other), never the
        # server's evaluation holdout.
        ds = load_dataset(
            name=d.dataset, seed=d.seed, target=d.target, schema=d.schema, split="holdout"
        )
        if ds.train_record_keys is None:
            raise DataError(f"{d.dataset}: no record keys to decide the demo's shares by")
        share = record_partition(ds.train_record_keys, parts=d.num_partitions, seed=d.seed)
        idx = np.flatnonzero(share == d.partition_id)
        x, y = ds.x_train[idx], ds.y_train[idx]
    else:
        ds = load_node_dataset(cfg)  # every record trains; schema, validation share (#13.1)
        if isinstance(ds, LazyDataset):  # keys and labels from the load's one pass
            return NodeRuntime(
                config=cfg,
                x=None,
                y=torch.from_numpy(ds.y_train),
                input_shape=ds.input_shape,
                num_classes=ds.num_classes,
                _trainers={},
                record_keys=ds.train_record_keys,
                data=ds.train,
            )
        x, y = ds.x_train, ds.y_train
    plan = ds.dp_scaling
    digest = load_schema(d.schema).digest() if plan is not None and d.schema else ""
    keys = getattr(ds, "train_record_keys", None)  # sha256 of each record's raw bytes
    if keys is None:
        keys = fallback_record_keys(x, y)  # FALLBACK: remove once every loader gives keys
    elif d.num_partitions is not None and d.partition_id is not None:
        keys = keys[idx]
    return NodeRuntime(
        config=cfg,
        x=torch.from_numpy(x),
        y=torch.from_numpy(y),
        input_shape=ds.input_shape,
        num_classes=ds.num_classes,
        _trainers={},
        record_keys=np.asarray(keys),
        dp_plan=plan,
        schema_digest=digest,
    )


def fallback_record_keys(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """FALLBACK (remove once ``Dataset.train_record_keys`` is everywhere): sha256 of each
    training row's bytes and its label, as an (n, 32) uint8 array.

    A row identifies a record only after the loader's transforms, so a record loaded with
    other transforms gets another key; the loader's keys (raw bytes) do not have that flaw.
    """
    xs = np.ascontiguousarray(x).reshape(len(x), -1)
    ys = np.ascontiguousarray(y)
    out = np.empty((len(xs), 32), dtype=np.uint8)
    for i in range(len(xs)):
        h = hashlib.sha256(xs[i].tobytes())
        h.update(ys[i].tobytes())
        out[i] = np.frombuffer(h.digest(), dtype=np.uint8)
    return out
