"""The ServerApp of a real deployment (`fedguard server`): FedAvg(M) over enrolled nodes.

It reads the operator's ``federation.toml`` (path given as the run config key
``config-path``), waits for ``min-nodes`` nodes, checks each node's description against
the task (:mod:`fedguard.server.cohort`) and runs the shared round loop
(:func:`fedguard.fl.loop.run_rounds`). After every round it checkpoints the global
model (safetensors, with round and config digest) and rewrites ``metrics.jsonl``, both in
the run's own folders (:mod:`fedguard.server.run_files`); a restarted server resumes
after the last checkpointed round of its run, so no round runs twice. At the start of
every round it looks at ``server.keys-dir``: a node whose key was deleted there is
unregistered from the SuperLink and sent nothing more (:mod:`fedguard.server.enrolment`).

A node is named by the key it was enrolled under, never by what it says it is. Whatever
happens, the ServerApp leaves ``state-dir/run-outcome.json`` for the launcher: completed
only when every round aggregated at least ``min-nodes`` updates.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
import traceback
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedguard._io import atomic_write_json, atomic_write_text
from fedguard.console import printable
from fedguard.deploy.flower import check_flower_version, patch_object_pull_backoff
from fedguard.deploy_config import CONFIG_KEY, FederationConfig, load_federation_config
from fedguard.errors import FedguardError
from fedguard.files import ERROR_LOG, METRICS_FILE, SUMMARY_FILE
from fedguard.fl.loop import (
    ClientUpdate,
    Refusal,
    RoundRecord,
    RoundShortError,
    SecureMean,
    TrainRequest,
    run_rounds,
)
from fedguard.fl.participants import Cohort, Participants
from fedguard.fl.strategies import client_prox_mu, server_optimizer
from fedguard.privacy.receipts import PrivacyReceipt
from fedguard.server.checkpoint import load_checkpoint, resume, save_round
from fedguard.server.cohort import check_cohort
from fedguard.server.deploy_nodes import (
    NODE_NAME,
    enrolled_names,
    gather_nodes,
    live_cohort,
    revocations,
)
from fedguard.server.deploy_parts import (
    client_level,
    evaluator,
    protection,
    read_metrics,
    run_summary,
    secagg_params,
)
from fedguard.server.run_files import (
    RunOutcome,
    RunStoppedError,
    run_files,
    write_outcome,
)
from fedguard.server.secure_round import secure_round
from fedguard.task import get_weights
from fedguard.task.builtin import build_task_model
from fedguard.task.metrics import headline
from fedguard.transport.grid import exchange_round
from fedguard.transport.messages import encode_train

__all__ = ["CONFIG_KEY", "DeployedRun", "RunStoppedError", "app"]


_log = logging.getLogger(__name__)

app = ServerApp()


def _say(text: str) -> None:
    # `flwr run --stream` relays the ServerApp's stdout to the operator's terminal.
    print(text, flush=True)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """The deployed ServerApp's entry point: run the federation the run config names.

    Flower calls it once per run, with the run config naming ``federation.toml``.
    :class:`DeployedRun` does the work; this writes the run's outcome file (which the
    launcher turns into its exit code and one line), whatever ends the run.
    """
    check_flower_version()
    cfg = load_federation_config(Path(str(context.run_config[CONFIG_KEY])))
    # A message seen before its payload costs a 1 s back-off per retry in stock Flower; a
    # reply whose node was killed mid-upload would be waited for 2 hours, not a round.
    patch_object_pull_backoff(max_time=cfg.federation.round_timeout)
    files = run_files(cfg)
    try:
        outcome = DeployedRun(grid=grid, cfg=cfg).run()
    except Exception as exc:  # the launcher says why; Flower would print it twice
        why = str(exc) if isinstance(exc, FedguardError) else f"{type(exc).__name__}: {exc}"
        try:
            cfg.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            atomic_write_text(cfg.state_dir / ERROR_LOG, traceback.format_exc(), mode=0o600)
            if not isinstance(exc, FedguardError):
                why += f" (traceback in {cfg.state_dir / ERROR_LOG})"
        except OSError:
            pass  # a full disk: the line below still reaches the operator's console
        # `flwr run --stream` relays this to the operator even when no file can be written.
        _say(f"stopped: {printable(why, limit=600)}")
        done = load_checkpoint(files.checkpoint)
        outcome = RunOutcome(
            run_id=files.run_id,
            completed=False,
            rounds_done=0 if done is None else done.server_round,
            rounds_planned=cfg.federation.rounds,
            reason=printable(why, limit=600),
        )
    write_outcome(files.outcome, outcome)


class DeployedRun:
    """One run of the deployed federation: cohort, rounds, checkpoints and results.

    Steps, in order: :meth:`resume_point`, :meth:`gather` (who is there, by enrolled
    name), :meth:`check` (who fits the task), then the rounds (:meth:`train_cohort` and
    :meth:`on_round`) and :meth:`summary`.
    """

    def __init__(self, *, grid: Grid, cfg: FederationConfig) -> None:
        self.grid, self.cfg, self.files = grid, cfg, run_files(cfg)
        t = cfg.task
        torch.set_num_threads(1)
        self.model = build_task_model(
            name=t.task or t.model,
            installed=t.task,
            input_shape=tuple(t.input_shape),
            num_classes=t.num_classes,
            generator=torch.Generator().manual_seed(cfg.federation.seed),
        )
        f = cfg.federation
        self.server = server_optimizer(
            strategy=f.strategy, server_lr=f.server_lr, server_momentum=f.server_momentum
        )
        self.records: list[dict[str, Any]] = []
        self.participants = Participants(())  # the fitting nodes, once gathered
        self.epsilon_of: dict[str, float] = {}
        self.receipts: dict[str, dict[str, Any]] = {}  # each node's newest receipt
        self.revoked = revocations(cfg, say=_say)
        self.run_id = self.files.run_id

    # -- steps -----------------------------------------------------------------------

    def run(self) -> RunOutcome:
        cfg, f = self.cfg, self.cfg.federation
        cfg.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.files.results.mkdir(parents=True, exist_ok=True)
        self.files.checkpoint.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        weights, first_round = self.resume_point()
        if first_round > f.rounds:
            return self._outcome(True, f.rounds, f"all {f.rounds} rounds already done")
        described = self.gather()
        fit = self.check(described)
        # A node's client id is its index among the fitting nodes, by enrolled name.
        self.participants = Participants.enrolled([(n, *described[n]) for n in fit])
        _say(f"{len(fit)} nodes: {', '.join(fit)}")
        _say(protection(cfg, first_round, len(fit)))
        started = time.perf_counter()
        size = max(f.min_nodes, math.ceil(f.fraction * len(fit)))
        self.cohort_size = min(size, len(fit))
        self.client_level = client_level(cfg, num_clients=len(fit), cohort_size=size)
        try:
            run_rounds(
                first_round=first_round,
                last_round=f.rounds,
                seed=f.seed,
                num_clients=len(fit),
                cohort_size=self.cohort_size,
                weights=weights,
                server=self.server,
                train_cohort=self.train_cohort,
                evaluate=evaluator(cfg, self.model),
                on_round=self.on_round,
                client_epsilon=self.client_level.epsilon if cfg.client_dp.enabled else None,
                min_updates=f.min_nodes,
            )
        except RoundShortError as exc:
            why = "; ".join(exc.reasons[:4]) or "no node refused: secure aggregation aborted"
            raise RunStoppedError(
                f"stopped: {exc} (min-nodes = {f.min_nodes}): {why}; the round is not "
                "counted: run the same command to retry it once the nodes are back"
            ) from None
        atomic_write_json(self.files.results / SUMMARY_FILE, self.summary(started))
        last = self.records[-1]
        return self._outcome(
            True,
            f.rounds,
            f"{headline(last) or 'no evaluation set'}; results in {self.files.results}",
        )

    def resume_point(self) -> tuple[list[np.ndarray], int]:
        """The weights and first round: after this run's checkpoint, if there is one."""
        files, digest = self.files, self.cfg.digest()
        path = files.checkpoint
        legacy = load_checkpoint(files.legacy_checkpoint)
        if not path.exists() and legacy is not None and legacy.config_digest == digest:
            path = files.legacy_checkpoint  # written before runs had their own folders
        point = resume(
            path, config_digest=digest, weights=get_weights(self.model), server=self.server
        )
        if point.checkpoint is not None:
            done = point.checkpoint.server_round
            self.records = read_metrics(files.results / METRICS_FILE, upto=done)
            if self.records:
                self.epsilon_of = dict(self.records[-1].get("epsilon_by_node", {}))
                self.receipts = dict(self.records[-1].get("receipts", {}))
            _say(f"resuming run {files.name} after round {done} from {path}")
        return point.weights, point.first_round

    def gather(self) -> dict[str, tuple[int, dict[str, Any]]]:
        """Every connected, unrevoked node: enrolled name -> (node id, its description).

        The name is the one its key was enrolled under (``enrolment.json``); what a node
        calls itself is never a key and is printed only escaped.
        """
        revoked_now = self.revoked()  # keys deleted while the server was down
        enrolled = enrolled_names(self.cfg)

        def named(info: dict[int, dict[str, Any]]) -> dict[str, tuple[int, dict[str, Any]]]:
            out: dict[str, tuple[int, dict[str, Any]]] = {}
            for node, desc in sorted(info.items()):
                if node in revoked_now:
                    continue
                claimed = str(desc.get("name", ""))
                if enrolled is None:  # no node authentication: nothing binds a name to a node
                    ok = NODE_NAME.match(claimed) and claimed not in out
                    name = claimed if ok else f"node-{node}"
                else:
                    name = enrolled.get(node, f"unrecorded-{node}")
                out[name] = (node, desc)
            return out

        def fit_count(info: dict[int, dict[str, Any]]) -> int:
            fit, _ = check_cohort(self.cfg, {n: d for n, (_, d) in named(info).items()})
            return len(fit)

        expected = None
        if enrolled is not None:
            expected = {n: name for n, name in enrolled.items() if n not in revoked_now}
        info = gather_nodes(self.grid, self.cfg, expected=expected, fit_count=fit_count, say=_say)
        out = named(info)
        for name, (_, desc) in out.items():
            claimed = str(desc.get("name", ""))
            if claimed != name:
                _say(f'{name} calls itself "{printable(claimed, limit=80)}"; named by its key')
        return out

    def check(self, described: dict[str, tuple[int, dict[str, Any]]]) -> list[str]:
        """The names of the nodes whose data and policy fit the task (#14.5)."""
        fit, misfits = check_cohort(self.cfg, {n: d for n, (_, d) in described.items()})
        for m in misfits:
            _say(f"left out {m.name}: {m.reason}")
        need = self.cfg.federation.min_nodes
        if len(fit) < need:
            raise RunStoppedError(
                f"stopped before round 1: {len(fit)} node(s) fit the task "
                f"({', '.join(fit) or 'none'}), min-nodes is {need}; nothing was trained"
            )
        return fit

    def train_cohort(
        self, server_round: int, cohort: list[int], global_weights: list[np.ndarray]
    ) -> Iterator[ClientUpdate | Refusal | SecureMean]:
        asked = self.participants.cohort(cohort)
        gone = self.revoked()
        for p in (p for p in asked if p.node_id in gone):
            r = gone[p.node_id]
            yield Refusal(
                client_id=p.client_id,
                reason=f"{p.name}: enrolment revoked on {r.at} ({r.reason}); not sent "
                f"round {server_round}",
            )
        asked = asked.without(p.client_id for p in asked if p.node_id in gone)
        live = live_cohort(self.grid, self.cfg, server_round=server_round, cohort=asked, say=_say)
        for p in sorted(set(asked) - set(live), key=lambda p: p.client_id):
            yield Refusal(
                client_id=p.client_id, reason=f"{p.name}: offline; not sent round {server_round}"
            )
        if not len(live):
            return
        yield from self._replies(server_round, live, global_weights)

    def _replies(
        self, server_round: int, cohort: Cohort, global_weights: list[np.ndarray]
    ) -> Iterator[ClientUpdate | Refusal | SecureMean]:
        cfg = self.cfg
        params = secagg_params(cfg, server_round, len(cohort)) if cfg.secagg.enabled else None
        request = self._request(server_round, params.threshold if params else 0)
        replies: Iterable[ClientUpdate | Refusal | SecureMean]
        if params is not None:
            replies = secure_round(
                grid=self.grid,
                params=params,
                cohort=cohort,
                train_content=lambda setup: encode_train(
                    weights=global_weights,
                    request=request,
                    secagg=setup,
                ),
                shapes=[w.shape for w in global_weights],
                timeout=cfg.federation.round_timeout,
                say=_say,
                receipt_run=request.run_key,
            )
        else:
            replies = exchange_round(
                grid=self.grid,
                server_round=server_round,
                cohort=cohort,
                content=encode_train(weights=global_weights, request=request),
                timeout=cfg.federation.round_timeout,
                receipt_run=request.run_key,
                expect=global_weights,
                max_update_norm=cfg.federation.max_update_norm,
                # As under secure aggregation: a public constant, never learnt from the nodes.
                weight_cap=cfg.federation.weight_cap,
            )
        for reply in replies:
            if isinstance(reply, ClientUpdate):
                self._note(reply)
            yield reply

    def _note(self, update: ClientUpdate) -> None:
        # Each node's newest epsilon and receipt, by enrolled name, for metrics and summary.
        name = self.participants[update.client_id].name
        if update.epsilon is not None:
            self.epsilon_of[name] = update.epsilon
        if isinstance(update.receipt, PrivacyReceipt):
            self.receipts[name] = dataclasses.asdict(update.receipt)

    def on_round(self, record: RoundRecord, new_weights: list[np.ndarray]) -> None:
        # No held-out set: metrics are NaN, written as null (JSON has no NaN).
        row: dict[str, Any] = {
            k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in record.as_dict().items()
        }
        row["epsilon_by_node"] = dict(sorted(self.epsilon_of.items()))
        row["receipts"] = dict(sorted(self.receipts.items()))
        self.records.append(row)
        # Checkpoint first: a crash after it replays nothing; before it, the round reruns.
        save_round(
            self.files.checkpoint,
            server_round=record.round,
            config_digest=self.cfg.digest(),
            weights=new_weights,
            server=self.server,
        )
        atomic_write_text(
            self.files.results / METRICS_FILE,
            "".join(json.dumps(r, allow_nan=False) + "\n" for r in self.records),
        )
        eps = ", ".join(f"{k} {v:.3f}" for k, v in sorted(self.epsilon_of.items()))
        quality = (
            ""
            if math.isnan(record.accuracy)
            else f" {headline(record.as_dict())} loss {record.loss:.4f}"
        )
        client = (
            ""
            if record.client_epsilon is None
            else f"; client-level epsilon {self.client_level.after(record.round).describe()}"
        )
        _say(
            f"round {record.round}:{quality} nodes {record.clients} refused {record.refused} "
            f"{record.seconds:.2f}s; epsilon: {eps}{client}"
        )

    def summary(self, started: float) -> dict[str, Any]:
        return run_summary(
            self.cfg,
            run_id=self.run_id,
            last=self.records[-1],
            nodes=self.participants.names,
            seconds=time.perf_counter() - started,
            client_level=self.client_level,
            cohort_size=self.cohort_size,
        )

    # -- helpers ---------------------------------------------------------------------

    def _request(self, server_round: int, threshold: int) -> TrainRequest:
        cfg, tr, cd = self.cfg, self.cfg.training, self.cfg.client_dp
        return TrainRequest(
            server_round=server_round,
            local_epochs=tr.local_epochs,
            batch_size=tr.batch_size,
            lr=tr.lr,
            momentum=tr.momentum,
            max_grad_norm=tr.max_grad_norm,
            total_rounds=cfg.federation.rounds,
            federation=cfg.federation.name,
            model=cfg.task.task or cfg.task.model,
            prox_mu=client_prox_mu(
                strategy=cfg.federation.strategy, prox_mu=cfg.federation.prox_mu
            ),
            # Same id after a restart from the checkpoint: nodes keep the run's noise plan.
            run_id=self.run_id,
            # Client-level DP: every node adds noise for a sum of at least t updates.
            client_clip=cd.clip_norm if cd.enabled else 0.0,
            client_noise=cd.noise_multiplier if cd.enabled else 0.0,
            client_min_contributors=threshold if cd.enabled else 0,
            class_weights=tuple(tr.class_weights or ()),
        )

    def _outcome(self, completed: bool, done: int, reason: str) -> RunOutcome:
        return RunOutcome(
            run_id=self.run_id,
            completed=completed,
            rounds_done=done,
            rounds_planned=self.cfg.federation.rounds,
            reason=reason,
        )
