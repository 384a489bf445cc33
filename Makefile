# fedguard: `make demo` and `make test` set up a fresh machine on their own.
SHELL := /bin/bash
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Keep every Flower/Ray process quiet and offline (FLOWER-NOTES.md).
export FLWR_TELEMETRY_ENABLED := 0
export RAY_USAGE_STATS_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
# Generated folders whose contents mirror the packages, for mypy (see `typecheck`).
TYPECHECK_ROOT := build/typecheck
SUBPACKAGES := privacy client server simulations

.PHONY: demo test lint typecheck unit venv clean bench-deploy bench-secagg protos bench-sim gpu-check \
	bench-fmnist wheel-check bench-dpstep crosscheck bench-record-budget bench-secagg-stages \
	bench-ray bench-scale

venv: $(STAMP)

# torch first, from the CPU wheel on disk: anything that pulls torch in before it gets a
# multi-GB CUDA build. constraints.txt then keeps pip from replacing it.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev,ray]'
	@touch $(STAMP)

# 1) a simulation: 10 virtual clients in one process; 2) a real federation on loopback:
# CA + certificates, one server and three client processes, TLS + node auth + DP.
demo: $(STAMP)
	$(BIN)/fedguard simulate --dataset digits --clients 10 --epsilon 3 --delta 1e-5 \
		--out runs/demo --overwrite
	$(BIN)/fedguard demo --out runs/demo-deploy --nodes 3 --rounds 12

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy resolves modules by folder; our subpackages live in top-level folders mapped by
# pyproject's package-dir, so give it a tree of links that mirrors the import namespace.
typecheck: $(STAMP)
	@rm -rf $(TYPECHECK_ROOT) && mkdir -p $(TYPECHECK_ROOT)/fedguard
	@for f in fedguard/*; do ln -s "$$PWD/$$f" "$(TYPECHECK_ROOT)/fedguard/$$(basename $$f)"; done
	@for d in $(SUBPACKAGES); do ln -s "$$PWD/$$d" "$(TYPECHECK_ROOT)/fedguard/$$d"; done
	@ln -s "$$PWD/benchmarks" "$(TYPECHECK_ROOT)/benchmarks"
	cd $(TYPECHECK_ROOT) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml -p fedguard \
		-p benchmarks

# Two pytest-xdist workers, one a core: the federation tests (tests marked deploy, ~3/4
# of the time) wait on their processes ~1/4 of theirs. tests/conftest.py hands the
# federation tests out first, so neither worker ends on a long one alone; `loadgroup`
# keeps an xdist_group's tests (one shared federation) on one worker. TEST_WORKERS=0: serial.
# Measured on 2 cores: pytest 549-693 s with 2 workers, 614 s with 3, 1044-1062 s serial.
TEST_WORKERS ?= 2
unit: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q -n $(TEST_WORKERS) --dist loadgroup

test: lint typecheck unit

# The package as a user gets it (#16): build the wheel, install it into a fresh virtual
# environment (CPU torch first, as above), then run a simulation and a one-round loopback
# federation from that install, outside the checkout. CI runs it after `make test`.
WHEEL_DIR := build/wheel-check
# Built from a clean copy: setuptools would reuse build/lib, where moved modules linger.
wheel-check: $(STAMP)
	rm -rf $(WHEEL_DIR) && mkdir -p $(WHEEL_DIR)/src
	tar -c --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./runs \
		--exclude='*.egg-info' --exclude=__pycache__ --exclude='.*_cache' . \
		| tar -x -C $(WHEEL_DIR)/src
	$(BIN)/pip wheel -q --no-deps --no-build-isolation -w $(WHEEL_DIR) $(WHEEL_DIR)/src
	$(PY) -m venv $(WHEEL_DIR)/venv
	$(WHEEL_DIR)/venv/bin/pip install -q --disable-pip-version-check -c constraints.txt torch==2.13.0
	$(WHEEL_DIR)/venv/bin/pip install -q --disable-pip-version-check -c constraints.txt \
		$(WHEEL_DIR)/fedguard-*.whl
	cd $(WHEEL_DIR) && venv/bin/python -c "import fedguard, pathlib, sys; \
		sys.exit(0 if 'site-packages' in pathlib.Path(fedguard.__file__).parts else 1)"
	cd $(WHEEL_DIR) && venv/bin/fedguard simulate --dataset digits --clients 3 --rounds 2 \
		--epsilon 3 --out sim --overwrite
	cd $(WHEEL_DIR) && venv/bin/fedguard demo --out demo --nodes 2 --rounds 1
	# The examples a user copies (#16.5), run from the wheel install (their folder on
	# PYTHONPATH, as a user's own task would be).
	cd $(WHEEL_DIR)/src/examples/credit-tabular && ../../../venv/bin/python make_data.py \
		--out ../../../credit.csv --rows 1500 && PYTHONPATH=. ../../../venv/bin/fedguard \
		simulate --config sim.toml --dataset ../../../credit.csv --rounds 3 \
		--out ../../../credit --overwrite
	$(WHEEL_DIR)/venv/bin/pip install -q --disable-pip-version-check pillow
	cd $(WHEEL_DIR)/src/examples/images-folder && ../../../venv/bin/python make_images.py \
		--out ../../../scans --per-class 30 && PYTHONPATH=. ../../../venv/bin/fedguard \
		simulate --config sim.toml --dataset ../../../scans --rounds 2 \
		--out ../../../scans-run --overwrite
	# Both examples in a one-round loopback federation (TLS, SecAgg+), every process from the
	# wheel install: the test runs outside the checkout, so fedguard is site-packages'.
	$(WHEEL_DIR)/venv/bin/pip install -q --disable-pip-version-check -c constraints.txt pytest
	cd $(WHEEL_DIR) && venv/bin/python -c "import fedguard, pathlib, sys; \
		sys.exit(0 if 'site-packages' in pathlib.Path(fedguard.__file__).parts else 1)" \
		&& venv/bin/python -m pytest -q -p no:cacheprovider \
		src/tests/deploy/test_examples_federation.py

# Regenerate fedguard/proto from protos/ with the pinned grpcio-tools; generated files are
# never edited by hand (tests/transport/test_protos_fresh.py fails when they are stale).
protos: $(STAMP)
	rm -f fedguard/proto/*/*_pb2.py fedguard/proto/*/*_pb2.pyi
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. \
		$$(find protos -name '*.proto' | sort)

# Benchmarks: not part of `make test`, nor of the package (#20.6). They live in benchmarks/,
# import fedguard like any user and run from the checkout: python -m benchmarks.<name>.
bench-deploy: $(STAMP)
	$(BIN)/python -m benchmarks.bench_deploy_overhead --nodes 3 --rounds 5

# Load: 50 `fedguard client` processes against one `fedguard server` on loopback (TLS, node
# auth, DP-SGD; secure aggregation on, then off), 3 rounds each. When 50 do not fit in the
# free memory it says so and runs as many as fit. Report in runs/bench-load/bench_load.md.
.PHONY: bench-load
bench-load: $(STAMP)
	$(BIN)/python -m benchmarks.bench_load --nodes 50 --rounds 3 --secagg on,off \
		--out runs/bench-load

# Imbalanced binary task (#17.5): a seeded make_classification with 3% positives on 3
# nodes, epsilon 1/3/8/non-private: ROC-AUC, PR-AUC, positive-class F1 (about a minute).
.PHONY: bench-imbalanced
bench-imbalanced: $(STAMP)
	$(BIN)/python -m benchmarks.bench_imbalanced --class-weights --out runs/bench-imbalanced

# Data larger than memory (#16.4): a seeded 2.2 GB image set as .npy, PNG folders and
# Parquet; 300 DP-SGD steps from each vs an in-memory subset: peak RSS, records/s, MB/s.
# Needs ~2.5 GB free disk at a time; the data is deleted afterwards (~25 min on 2 cores).
.PHONY: bench-large-data
bench-large-data: $(STAMP)
	$(BIN)/python -m benchmarks.bench_large_data --records 180000 --steps 300 \
		--formats npy,images,parquet --out runs/bench-large-data/bench_large_data.md

# Secure aggregation's cost: s/round and bytes/node with and without, n = 10, 50, 100.
bench-secagg: $(STAMP)
	$(BIN)/python -m benchmarks.bench_secagg --clients 10,50,100 --models 10k,1M

# A deployed node's and the server's secure-aggregation time by stage, next to training.
bench-secagg-stages: $(STAMP)
	$(BIN)/python -m benchmarks.bench_secagg_stages --clients 10,50,100 --models 10k,1M

# In-process engine vs a hand-written PyTorch + Opacus loop vs Flower's Ray engine at
# 10/100/1000 clients per round, and DP-SGD step cost per per-sample-gradient mode.
bench-sim: $(STAMP)
	$(BIN)/python -m benchmarks.bench_sim --clients 10,100,1000

# 1000 and 10,000 clients per round (bench-sim's federation), each in its own process:
# s/round, x floor, peak memory and the memory one more client costs.
bench-scale: $(STAMP)
	$(BIN)/python -m benchmarks.bench_scale --clients 1000,10000

# --engine ray at 1 and 2 workers next to the in-process engine: wall and per-worker CPU
# seconds per round (1000 clients x 50 examples, MLP), and the one-core-per-worker estimate.
bench-ray: $(STAMP)
	$(BIN)/python -m benchmarks.bench_ray --clients 1000 --workers 1,2 --out runs/bench-ray

# DP-SGD step cost against a plain step, per per-sample-gradient mode (part of bench-sim).
bench-dpstep: $(STAMP)
	$(BIN)/python -m benchmarks.bench_dpstep --batch 256 --models mlp,cnn --secure

# fedguard's epsilon next to Google's dp-accounting over the cross-check grid, as a table
# (~30 s; tests/benchmarks/test_crosscheck.py asserts the same grid).
crosscheck: $(STAMP)
	$(BIN)/python -m benchmarks.crosscheck_table

# The per-record budget's cost at scale (1,000,000 records by default).
bench-record-budget: $(STAMP)
	$(BIN)/python -m benchmarks.bench_record_budget

# On a CUDA machine: bench-sim and a 1000-client Fashion-MNIST sweep cell on the GPU in
# under 8 minutes; elsewhere the same steps reduced, on the CPU. Figures in runs/gpu-check.
gpu-check: $(STAMP)
	benchmarks/gpu_check.sh runs/gpu-check

# Fashion-MNIST accuracy against privacy (issue #5): 10 clients, IID and Dirichlet(0.5),
# epsilon 1/3/8/non-private, Tramer & Boneh's ScatterNet + small CNN (examples/fmnist.toml;
# their end-to-end CNN on pixels: `fedguard sweep --config examples/fmnist_cnn.toml`). Installs
# Debian's dataset-fashion-mnist when its IDX files are missing; nothing else is
# downloaded. Resumable: rerun to finish an interrupted sweep. Report in runs/bench-fmnist.
FMNIST_DIR := /usr/share/datasets/fashion-mnist
FMNIST_FILES := train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte \
	t10k-labels-idx1-ubyte
bench-fmnist: $(STAMP)
	@missing=; for f in $(FMNIST_FILES); do \
		test -f $(FMNIST_DIR)/$$f.gz || test -f $(FMNIST_DIR)/$$f || missing="$$missing $$f"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "Fashion-MNIST missing from $(FMNIST_DIR) ($$missing):" \
			"installing Debian's dataset-fashion-mnist"; \
		sudo=; [ "$$(id -u)" = 0 ] || sudo=sudo; \
		$$sudo apt-get install -y dataset-fashion-mnist \
			|| { $$sudo apt-get update && $$sudo apt-get install -y dataset-fashion-mnist; }; \
	fi
	$(BIN)/fedguard sweep --config examples/fmnist.toml

clean:
	rm -rf $(VENV) build runs .pytest_cache .mypy_cache .ruff_cache
