"""The names of the files fedguard writes: one place, so every reader finds what a writer
wrote (util layer: no imports; ``privacy`` may use it).

A name here is part of the on-disk layout operators and tools rely on (docs/reference.md
lists them): renaming one strands every existing state folder and results folder.
"""

from __future__ import annotations

__all__ = [
    "ACCOUNTANT_FILE",
    "BUDGET_LOCK",
    "CHECKPOINT_FILE",
    "ENROLMENT_FILE",
    "ERROR_LOG",
    "EVENTS_FILE",
    "INDEX_FILE",
    "LAST_REPLY_FILE",
    "LEDGER_FILE",
    "METRICS_FILE",
    "MODEL_FILE",
    "NODE_LOCK",
    "NODE_SECRET_FILE",
    "OUTCOME_FILE",
    "PLANS_FILE",
    "PLOT_FILE",
    "RELEASED_FILE",
    "REPORT_FILE",
    "RESULTS_FILE",
    "SCALING_FILE",
    "SESSION_FILE",
    "SIGNED_FILE",
    "SUMMARY_FILE",
    "SWEEP_MARKER_FILE",
    "UPDATE_FILE",
]

# Results of a run (simulation: --out; deployment: out/<run name>).
METRICS_FILE = "metrics.jsonl"  # one line per round, rewritten atomically after each
SUMMARY_FILE = "summary.json"  # the settings and final figures of a finished run
MODEL_FILE = "model.safetensors"  # a simulation's final global model
SWEEP_MARKER_FILE = "sweep.json"  # marks a folder as a sweep's output (fedguard sweep)
RESULTS_FILE = "results.csv"  # a sweep's table, one row per cell
PLOT_FILE = "accuracy_vs_epsilon.png"  # a sweep's plot
REPORT_FILE = "report.md"  # a sweep's report

# A virtual client's state in a simulation (state/client-NNNNN/).
ACCOUNTANT_FILE = "accountant.json"

# A node's state folder (node.toml's state-dir).
LEDGER_FILE = "ledger.jsonl"  # the hash-chained privacy ledger: the record of reference
INDEX_FILE = "record-index.npz"  # keyed record digests -> their spend
PLANS_FILE = "run-plans.json"  # each run's noise, fixed at its first round
SCALING_FILE = "dp-scaling.json"  # released DP feature-scaling constants
LAST_REPLY_FILE = "last-reply.safetensors"  # the reply resent to the same request
RELEASED_FILE = "secagg-released.json"  # updates released into secure sums
SIGNED_FILE = "secagg-signed.jsonl"  # the survivor set signed per session context
SESSION_FILE = "secagg-session.pb"  # the SecAgg+ client state between stages
UPDATE_FILE = "secagg-update.npz"  # the (noised) update between training and masking
NODE_SECRET_FILE = "node-secret.key"  # noqa: S105 (a file name, not a secret)
EVENTS_FILE = "node-events.log"  # what the node refused or voided, for its operator
BUDGET_LOCK = "budget.lock"  # one writer of the budget files at a time
NODE_LOCK = "node.lock"  # one node process per state folder

# The server's state folder (federation.toml's state-dir).
ENROLMENT_FILE = "enrolment.json"  # node name -> enrolled public key
CHECKPOINT_FILE = "checkpoint.safetensors"  # global model and optimiser state per round
OUTCOME_FILE = "run-outcome.json"  # the last ServerApp's outcome, for the launcher
ERROR_LOG = "serverapp-error.log"  # the traceback of a ServerApp that raised
