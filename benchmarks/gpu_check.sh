#!/usr/bin/env bash
# The GPU check: on a machine with CUDA, within 10 minutes, (1) `bench-sim` on the GPU
# (in-process engine and reference loop at 10/100/1000 clients, DP-SGD step costs),
# (2) `bench-scale` at 1000 and 10,000 clients per round (time, peak memory, the memory
# one client costs) and (3) one 1000-client Fashion-MNIST sweep cell (CNN, DP, every client every round) on the
# GPU, writing every figure under OUT.
#
#   benchmarks/gpu_check.sh OUT              # full on CUDA; reduced without it
#   benchmarks/gpu_check.sh OUT --reduced    # reduced anywhere (make gpu-check, tests)
#
# Reduced (no CUDA, or asked for): the same steps on the CPU, small: bench-sim --quick and
# a 2-round cell over 20 sampled clients, so the script is known to work before a GPU is
# at hand. Fashion-MNIST comes from `apt-get install -y dataset-fashion-mnist` (IDX files in
# /usr/share/datasets/fashion-mnist); where it is missing the cell uses digits and says so.
# Outputs: OUT/summary.md (everything), OUT/bench/bench_sim.{md,json},
# OUT/scale/bench_scale.{md,json},
# OUT/sweep/{results.csv,report.md,accuracy_vs_epsilon.png,runs/}, OUT/env.txt.
set -euo pipefail

usage() { echo "usage: $0 OUT [--reduced]" >&2; exit 2; }
[[ $# -ge 1 && $# -le 2 ]] || usage
OUT=$1
REDUCED=0
if [[ $# -eq 2 ]]; then [[ $2 == --reduced ]] || usage; REDUCED=1; fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
FEDGUARD=${FEDGUARD:-$ROOT/.venv/bin/fedguard}
FMNIST_DIR=${FMNIST_DIR:-/usr/share/datasets/fashion-mnist}
# The benchmarks are not installed: `python -m benchmarks.X` finds them from the checkout.
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
export FLWR_TELEMETRY_ENABLED=0 RAY_USAGE_STATS_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1

if [[ $("$PY" -c 'import torch; print(int(torch.cuda.is_available()))') != 1 ]]; then
  [[ $REDUCED == 1 ]] || echo "gpu_check: torch sees no CUDA device: reduced mode on the CPU" >&2
  REDUCED=1
fi
if [[ $REDUCED == 1 ]]; then
  DEVICE=cpu; MODE=reduced
  BENCH_ARGS=(--quick)
  SCALE_CLIENTS=50,100; SCALE_LIMIT=60
  CELL_ROUNDS=2; CELL_COHORT=20; BENCH_LIMIT=120; CELL_LIMIT=120
else
  DEVICE=cuda; MODE=full
  # (c), Flower's engine, runs on the CPU whatever the device: `make bench-sim` has it.
  BENCH_ARGS=(--no-flower --repeats 1)
  SCALE_CLIENTS=1000,10000; SCALE_LIMIT=120
  CELL_ROUNDS=${CELL_ROUNDS:-5}; CELL_COHORT=1000; BENCH_LIMIT=270; CELL_LIMIT=180
fi
if ls "$FMNIST_DIR"/train-images-idx3-ubyte* >/dev/null 2>&1; then
  DATASET=fashion_mnist; CLIENTS=1000; MODEL=cnn
else
  echo "gpu_check: no Fashion-MNIST in $FMNIST_DIR (apt-get install -y dataset-fashion-mnist):" \
    "the sweep cell uses digits" >&2
  DATASET=digits; CLIENTS=1000; MODEL=cnn
  [[ $REDUCED == 1 ]] && CLIENTS=100
fi

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
{
  echo "mode: $MODE, device: $DEVICE, data set: $DATASET, started $(date -u +%FT%TZ)"
  "$PY" -c 'import torch, opacus, flwr; print("torch", torch.__version__, "cuda", torch.version.cuda,
"opacus", opacus.__version__, "flwr", flwr.__version__)
if torch.cuda.is_available(): print("gpu", torch.cuda.get_device_name(0))'
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv || true
  nproc; uptime
} >"$OUT/env.txt" 2>&1

step() {  # step NAME LIMIT_S CMD...: run, time, and keep going after a failure
  local name=$1 limit=$2 start=$SECONDS rc=0
  shift 2
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1 || rc=$?
  echo "| $name | $((SECONDS - start)) s | $([[ $rc == 0 ]] && echo ok || echo "failed ($rc)") |" \
    >>"$OUT/steps.md"
  return 0
}
printf '| step | wall | status |\n|---|---|---|\n' >"$OUT/steps.md"

# 1) the simulation benchmark and the DP-SGD step costs on the device.
step bench "$BENCH_LIMIT" "$PY" -m benchmarks.bench_sim --device "$DEVICE" \
  "${BENCH_ARGS[@]}" --out "$OUT/bench"

# 2) 1000 and 10,000 clients per round: time and the memory one client costs.
step scale "$SCALE_LIMIT" "$PY" -m benchmarks.bench_scale --device "$DEVICE" \
  --clients "$SCALE_CLIENTS" --out "$OUT/scale"

# 3) one sweep cell: CLIENTS clients, CELL_COHORT of them every round, epsilon 3.
cat >"$OUT/sweep.toml" <<EOF
epsilon = [3.0]
seed = [0]
partition = ["iid"]
clients-per-round = [$CELL_COHORT]
dataset = "$DATASET"
model = "$MODEL"
clients = $CLIENTS
rounds = $CELL_ROUNDS
batch-size = 32
lr = 0.5
max-grad-norm = 1.0
delta = 1e-5
device = "$DEVICE"
out = "$OUT/sweep"
EOF
step sweep "$CELL_LIMIT" "$FEDGUARD" sweep --config "$OUT/sweep.toml" --overwrite

{
  echo "# GPU check ($MODE, device $DEVICE)"
  echo
  sed 's/^/    /' "$OUT/env.txt"
  echo
  cat "$OUT/steps.md"
  echo
  echo "## bench-sim"
  echo
  cat "$OUT/bench/bench_sim.md" 2>/dev/null || echo "(no output: see bench.log)"
  echo
  echo "## bench-scale"
  echo
  cat "$OUT/scale/bench_scale.md" 2>/dev/null || echo "(no output: see scale.log)"
  echo
  echo "## Sweep cell: $CLIENTS clients, $DATASET, $MODEL, $CELL_ROUNDS rounds"
  echo
  "$PY" - "$OUT/sweep/results.csv" <<'PY' 2>/dev/null || echo "(no output: see sweep.log)"
import csv, sys
keys = ["run", "dataset", "model", "clients", "clients_per_round", "rounds", "device",
        "final_accuracy", "epsilon_reached", "wall_seconds"]
rows = list(csv.DictReader(open(sys.argv[1], encoding="utf-8")))
print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
for r in rows:
    print("| " + " | ".join(r[k] for k in keys) + " |")
PY
} >"$OUT/summary.md"
cat "$OUT/summary.md"
! grep -q failed "$OUT/steps.md"
