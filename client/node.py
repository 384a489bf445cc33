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

Here the request's path through a round; the records are loaded by
:mod:`fedguard.client.node_records`, the policy decides in :mod:`fedguard.client.round_policy`,
the ledger is read and written in :mod:`fedguard.client.round_ledger`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedguard.client.events import RUN_DONE, append_event
from fedguard.client.node_records import load_node_records
from fedguard.client.released import HeldUpdate, update_digest
from fedguard.client.round_ledger import read_spend, scale_before_round, write_ahead
from fedguard.client.round_policy import check_local_epochs, plan_round
from fedguard.client.scaling import release_to_come
from fedguard.client.state_lock import hold_lock
from fedguard.client.stored_reply import read_stored_reply, write_stored_reply
from fedguard.client.stored_reply import round_key as _round_key
from fedguard.client.void import hold, release, settle
from fedguard.deploy_config import NodeConfig, load_node_config
from fedguard.errors import DataError, RefusalError, StateFileError
from fedguard.files import BUDGET_LOCK, LAST_REPLY_FILE, LEDGER_FILE
from fedguard.fl.local import LocalResult, LocalTrainer, PrivacyBudget
from fedguard.fl.loop import TrainRequest
from fedguard.privacy import AccountantStore, GaussianEvent
from fedguard.privacy.ledger import Ledger, LedgerEntry, LedgerError
from fedguard.privacy.node_secret import load_node_secret
from fedguard.privacy.receipts import PrivacyReceipt, receipt_for
from fedguard.privacy.record_budget import RecordSet, RecordSpend, record_set
from fedguard.privacy.rng import os_entropy_generator
from fedguard.task import set_weights
from fedguard.task.builtin import build_task_model
from fedguard.task.lazy_records import TaskRecords
from fedguard.task.schema import DPScalingPlan

__all__ = ["NodeRuntime", "node_runtime", "read_stored_reply"]

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
        check_local_epochs(request, self.config.privacy)
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
        entries, spend = read_spend(
            state_dir=self.state_dir, ledger=ledger, records=records, server_round=r
        )

        # A dp-scaling release still to come is counted in every check below, so a run
        # that cannot fit is refused before the release, and the plan sees it.
        try:
            pre = self._scaling_to_release()
        except DataError as exc:
            raise StateFileError(f"round {r} refused: {exc}") from None
        allowed = plan_round(
            state_dir=self.state_dir,
            policy=policy,
            request=request,
            spend=spend,
            fingerprint=records.fingerprint,
            num_examples=len(self.y),
            pre=pre,
        )
        plan, event, q, steps = allowed.plan, allowed.event, allowed.sample_rate, allowed.steps
        after = allowed.epsilon_after
        if pre or self.dp_plan is not None:
            entries, spend = self._scale_locked(ledger, records, entries, spend, pre, r)
        before = ledger.spent(dataset_fingerprint=records.fingerprint)
        entry = write_ahead(
            state_dir=self.state_dir,
            ledger=ledger,
            records=records,
            entries=entries,
            spend=spend,
            request=request,
            allowed=allowed,
            policy=policy,
        )
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
        write_stored_reply(self.state_dir / LAST_REPLY_FILE, key=key, result=result)
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
        x, entries, spend = scale_before_round(
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
            server_round=r,
        )
        self.x, self._scaled = torch.from_numpy(x), True
        return entries, spend

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


@functools.lru_cache(maxsize=2)
def node_runtime(config_path: str) -> NodeRuntime:
    """Load the node's config and data once per process (the ClientApp is rebuilt per
    message; this cache only saves the loading, never privacy state)."""
    cfg = load_node_config(Path(config_path))
    cfg.node.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    loaded = load_node_records(cfg)
    return NodeRuntime(
        config=cfg,
        x=loaded.x,
        y=loaded.y,
        input_shape=loaded.input_shape,
        num_classes=loaded.num_classes,
        _trainers={},
        record_keys=loaded.record_keys,
        dp_plan=loaded.dp_plan,
        schema_digest=loaded.schema_digest,
        data=loaded.data,
    )
