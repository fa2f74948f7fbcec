# Quick start: `make demo` runs the whole path on phantoms; `make test` runs
# the test suite against real dcmtk, Orthanc, dicom3tools and PostgreSQL.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test phantom-models install install-dev install-service uninstall-service system-deps lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The daemon alone: the demo uses the phantom models that ship in phantoms/trained.
install: $(BIN)/python
	$(BIN)/pip install --quiet -e .

install-dev: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[train,test]'

system-deps:
	bash tests/install_system_deps.sh

demo: install
	$(BIN)/triage demo

lint: install-dev
	$(BIN)/ruff check daemon dicom_io domain model_runtime phantoms storage trainer tests bench
	$(BIN)/ruff format --check daemon dicom_io domain model_runtime phantoms storage trainer tests bench
	$(BIN)/mypy

# The whole suite on SQLite, then every test that touches a database (the
# network tests) again on a private PostgreSQL server.
test: system-deps install-dev lint
	bash tests/run_in_netns.sh $(BIN)/pytest --run-training
	TRIAGE_TEST_DATABASE=postgresql bash tests/run_in_netns.sh $(BIN)/pytest -m network

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
