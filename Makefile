# DFA workbench. `make repro` runs the embedded default end to end; `make test` runs the tests.
SHELL := /bin/bash
PY := .venv/bin/python
STAMP := .venv/.installed
export OMP_WAIT_POLICY := PASSIVE

.PHONY: setup test test-fast repro ablation-table bench ui dashboard clean-smoke

# .venv is (re)built when missing or older than pyproject.toml.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m dfa.tracking_init
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -ra

test-fast: $(STAMP)
	$(PY) -m pytest -q -ra -m "not slow"

# One MLflow parent run per invocation groups the child run of every stage.
repro: $(STAMP)
	test -d .dvc || .venv/bin/dvc init -q
	PATH=$(CURDIR)/.venv/bin:$$PATH DFA_PIPELINE_ID=repro-$$(date +%Y%m%d-%H%M%S) dvc repro

ablation-table: $(STAMP)
	DFA_PIPELINE_ID=ablation-$$(date +%Y%m%d-%H%M%S) $(PY) -m dfa ablation

bench: $(STAMP)
	$(PY) -m dfa bench

# MLflow's UI on the tracking store; prints the URL of the runs table to open.
ui: $(STAMP)
	$(PY) -m dfa ui --host 127.0.0.1 --port 5000

# optuna-dashboard on the study storage (search.storage).
dashboard: $(STAMP)
	$(PY) -m dfa dashboard --host 127.0.0.1 --port 8080

# Everything --smoke wrote (its MLflow runs stay in the store, in the experiment <name>-smoke).
clean-smoke:
	rm -rf smoke
