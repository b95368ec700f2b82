# Two commands on a fresh clone:  `make demo` (the main job) and `make test` (the test suite).
# Each sets up what it needs: a virtual environment, the CPU torch wheel where no torch is
# installed, and Fashion-MNIST from the Debian package where it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Where no torch is importable, this is installed. GPU users: make TORCH_SPEC='torch' (or have torch already).
TORCH_SPEC ?= torch==2.13.0
CONFIG ?= src/simclrv2/configs/demo.toml
RUN_DIR ?= runs/demo

.PHONY: setup setup-run data demo test lint bench clean

# setup: everything `make test` needs (pytest, ruff and every optional extra, TensorFlow included);
# setup-run: what running the package needs (its report's plots, TensorBoard scalars), ~35 s less to install.
setup: $(VENV)/.installed
setup-run: $(VENV)/.installed-run

$(VENV)/.installed: pyproject.toml
	bash scripts/setup_env.sh "$(PYTHON)" "$(VENV)" "$(TORCH_SPEC)" dev
	@touch $@ $(VENV)/.installed-run

$(VENV)/.installed-run: pyproject.toml
	bash scripts/setup_env.sh "$(PYTHON)" "$(VENV)" "$(TORCH_SPEC)" report,tensorboard
	@touch $@

data:
	@bash scripts/get_fashion_mnist.sh

demo: setup-run data
	$(VENV)/bin/simclrv2 pipeline --config $(CONFIG) --run-dir $(RUN_DIR) --resume

lint: setup
	$(PY) -m ruff check src tests benchmarks

# pytest exits 5 when it collects no tests; that is reported, not hidden.
test: setup lint
	@$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests (exit 5): check tests/ and PYTEST_ARGS"; fi; \
	exit $$rc

# Ours, then the peer harness (lightly 1.6.0, shared scripts, their own venv) at each width, then the ratios;
# without the peer venv, one line says how to set it up. fp32: the precision the peer runs in.
PEER_BENCH ?= ../shared/bench
PEER_PYTHON ?= $(HOME)/.cache/simclrv2-peers-venv/bin/python
BENCH_ARGS ?= --precision fp32
bench: setup-run data
	$(PY) benchmarks/pretrain_throughput.py $(BENCH_ARGS) --peer-bench $(PEER_BENCH) --peer-python $(PEER_PYTHON)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
