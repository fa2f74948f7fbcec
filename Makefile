# Quick start: `make demo` runs the whole path on phantoms; `make test` runs
# the test suite against real dcmtk, Orthanc, dicom3tools and PostgreSQL.
# Python 3.11, 3.12 or 3.13 (PYTHON=python3.13, say). Every install takes
# the exact versions of uv.lock, through its hashed exports in requirements/.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# `make wheelhouse`: for this Python version and platform unless told otherwise.
WHEELHOUSE ?= wheelhouse
WHEEL_PYTHON ?= $(shell $(PYTHON) -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
FLAVOUR ?= cpu

.PHONY: demo demo-train test test-wheelhouses phantom-models install install-dev install-service uninstall-service system-deps lint lock wheelhouse clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))' 2>/dev/null || { \
	  echo "dicom-triage runs on Python 3.11, 3.12 or 3.13; $(PYTHON) is $$($(PYTHON) -V 2>&1)."; \
	  echo "Name one with PYTHON=python3.12 (say), or install one: apt install python3"; exit 1; }
	@$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
	  echo "Cannot make a virtual environment: on Debian or Ubuntu, apt install python3-venv"; exit 1; }
	$(BIN)/pip install --quiet --upgrade pip

# ONNX Runtime's two builds install one module: remove the one not wanted
# (an older .venv had the GPU build) before installing the other.
OTHER_BUILD = $(if $(filter gpu,$(FLAVOUR)),onnxruntime,onnxruntime-gpu)

# The daemon alone, on ONNX Runtime's CPU build (FLAVOUR=gpu: the GPU one):
# the demo uses the phantom models that ship in phantoms/trained (no TensorFlow).
install: $(BIN)/python
	$(BIN)/pip uninstall --quiet --yes $(OTHER_BUILD) 2>/dev/null || true
	$(BIN)/pip install --quiet --require-hashes -r requirements/$(FLAVOUR).txt
	$(BIN)/pip install --quiet --no-deps -e .

# With the trainer (TensorFlow) and the test tools, on the CPU build.
install-dev: $(BIN)/python
	$(BIN)/pip uninstall --quiet --yes onnxruntime-gpu 2>/dev/null || true
	$(BIN)/pip install --quiet --require-hashes -r requirements/dev.txt
	$(BIN)/pip install --quiet --no-deps -e .

# After changing dependencies in pyproject.toml: lock them again and export
# the hashed lists that pip installs from (tests/test_install.py checks they agree).
lock: install-dev
	$(BIN)/uv lock
	$(BIN)/uv export --frozen --no-emit-project --no-header --extra cpu -o requirements/cpu.txt
	$(BIN)/uv export --frozen --no-emit-project --no-header --extra gpu -o requirements/gpu.txt
	$(BIN)/uv export --frozen --no-emit-project --no-header --extra cpu --extra train --extra test -o requirements/dev.txt

# Every wheel the service needs, for an air-gapped host: systemd/install.sh
# --wheelhouse DIR installs from it with no network.
wheelhouse: $(BIN)/python
	PYTHON=$(BIN)/python bash systemd/wheelhouse.sh $(WHEELHOUSE) $(WHEEL_PYTHON) $(FLAVOUR)

system-deps:
	bash tests/install_system_deps.sh

demo: install
	$(BIN)/triage demo

# The demo with models trained here first, by the project's trainer (TensorFlow).
demo-train: install-dev phantom-models
	$(BIN)/triage demo

lint: install-dev
	$(BIN)/ruff check daemon dicom_io domain model_runtime phantoms storage trainer tests bench
	$(BIN)/ruff format --check daemon dicom_io domain model_runtime phantoms storage trainer tests bench
	$(BIN)/mypy

# The whole suite on SQLite, then every test that touches a database (the
# network tests, less those decided before the database) again on a
# private PostgreSQL server. Two pytest workers (CI has 2 cores; most tests
# wait on peers, not on a core), but the tests marked "training" (by their
# fixtures, in tests/conftest.py) on their own, serially: their session
# fixture trains both models once, into one cache, with both cores. The
# slowest tests are listed, to keep the suite inside its 30 minutes.
PYTEST_PARALLEL := -n 2 --durations=15
test: system-deps install-dev lint test-wheelhouses
	bash tests/run_in_netns.sh $(BIN)/pytest $(PYTEST_PARALLEL) -m "not training"
	bash tests/run_in_netns.sh $(BIN)/pytest --durations=5 --run-training -m training
	TRIAGE_TEST_DATABASE=postgresql bash tests/run_in_netns.sh $(BIN)/pytest $(PYTEST_PARALLEL) -m "network and not before_database"

# Wheelhouses for tests/test_install.py, which installs from them inside the
# network namespace, where nothing can be downloaded.
TEST_PYTHONS := 3.11 3.12 3.13
test-wheelhouses: install-dev
	for version in $(TEST_PYTHONS); do \
	  PYTHON=$(BIN)/python bash systemd/wheelhouse.sh .wheelhouse/$$version $$version cpu; done

# The phantom-trained packages the demo and the tests use (phantoms/trained): run
# after changing the phantoms, the model input or the package format.
phantom-models: install-dev
	$(BIN)/python -m phantoms.trained_models

# As root: the service under /opt/dicom-triage, /etc/dicom-triage and systemd.
install-service:
	bash systemd/install.sh

uninstall-service:
	bash systemd/install.sh uninstall

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
