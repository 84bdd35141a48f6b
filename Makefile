# DFA workbench. `make repro` runs the embedded default end to end; `make test` runs the tests.
SHELL := /bin/bash
PY := .venv/bin/python
STAMP := .venv/.installed
export OMP_WAIT_POLICY := PASSIVE

.PHONY: setup test test-fast repro ablation-table ablation-table-alt ablation-table-small bench ui dashboard clean-smoke postgres postgres-stop mlflow-server rehearse-voc rehearse-coco

# .venv is (re)built when missing or older than pyproject.toml.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m dfa.tracking_init
	touch $(STAMP)

setup: $(STAMP)

# Two xdist workers, a test file per worker (module fixtures stay in one process; the session's
# smoke workspaces are built once under a file lock, tests/conftest.py), heaviest files first
# (conftest's HEAVY_FIRST; --no-loadscope-reorder keeps that order). PYTEST_ARGS adds options.
XDIST := -n 2 --dist loadfile --no-loadscope-reorder
test: $(STAMP)
	$(PY) -m pytest -q -ra $(XDIST) --durations=25 $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -ra $(XDIST) -m "not slow" $(PYTEST_ARGS)

# One MLflow parent run per invocation groups the child run of every stage.
repro: $(STAMP)
	test -d .dvc || .venv/bin/dvc init -q
	PATH=$(CURDIR)/.venv/bin:$$PATH DFA_PIPELINE_ID=repro-$$(date +%Y%m%d-%H%M%S) dvc repro

# ABLATION_ARGS passes a subset, e.g. make ablation-table ABLATION_ARGS="--rows 0,4 --seeds 0"
ABLATION_ARGS ?=

ablation-table: $(STAMP)
	DFA_PIPELINE_ID=ablation-$$(date +%Y%m%d-%H%M%S) $(PY) -m dfa ablation $(ABLATION_ARGS)

# The second embedded benchmark (issue 11): other classes, outlines, marks, co-occurrences and
# image sizes, another generator seed, its own small CLIP. Everything it writes goes under
# runs/alt/ (out_root) and checkpoints/*-alt; the table and the CLIP's metrics are copied to reports/alt/.
ALT := -S out_root=runs/alt -S tracking.experiment=dfa-alt -S data.root=data/synthetic-alt \
  -S data.synthetic.variant=alt -S data.synthetic.seed=7 -S "data.synthetic.size_range=[80,144]" \
  -S clip.checkpoint=checkpoints/clip-alt/model.pt -S cache.dir=cache/features-alt -S train.dir=checkpoints/dfa-alt

# One other benchmark's table: $(1) its name (runs/$(1), reports/$(1)), $(2) its overrides.
define other_benchmark_table
	for stage in prepare pretrain-clip cache; do $(PY) -m dfa $$stage $(2) || exit 1; done
	DFA_PIPELINE_ID=ablation-$(1)-$$(date +%Y%m%d-%H%M%S) $(PY) -m dfa ablation $(2) $(ABLATION_ARGS)
	mkdir -p reports/$(1)/figures
	cp runs/$(1)/reports/ablation.md runs/$(1)/reports/ablation.csv runs/$(1)/reports/metrics/clip.json \
	  runs/$(1)/reports/metrics/data.json reports/$(1)/
	cp runs/$(1)/reports/figures/ablation.png reports/$(1)/figures/
endef

ablation-table-alt: $(STAMP)
	$(call other_benchmark_table,alt,$(ALT))

# The third embedded benchmark (issue 17, method.md §12 v3): small objects. The base classes and
# generator at object_scale [0.1, 0.3] of the short side (most objects cover a few % of the image,
# as many VOC images do), another generator seed, its own small CLIP. Everything it writes goes
# under runs/small/ (out_root) and checkpoints/*-small; the table and the CLIP's and data's
# metrics are copied to reports/small/.
SMALL := -S out_root=runs/small -S tracking.experiment=dfa-small -S data.root=data/synthetic-small \
  -S data.synthetic.seed=5 -S "data.synthetic.object_scale=[0.1,0.3]" \
  -S clip.checkpoint=checkpoints/clip-small/model.pt -S cache.dir=cache/features-small -S train.dir=checkpoints/dfa-small

ablation-table-small: $(STAMP)
	$(call other_benchmark_table,small,$(SMALL))

# Dress rehearsal of a real run (README "Real data"): a stand-in tree in VOC's (COCO's) exact layout,
# check-data, then every stage with --profile voc (coco), a random-weight ViT-B-16 and a few dozen
# steps, all under runs/rehearse-voc (-coco), with assertions on grid, K, OT columns and artifacts.
# Its numbers mean nothing. REHEARSE_ARGS passes sizes, e.g. REHEARSE_ARGS="--images 20 --steps 12".
REHEARSE_ARGS ?=

rehearse-voc: $(STAMP)
	$(PY) experiments/rehearse.py --kind voc $(REHEARSE_ARGS)

rehearse-coco: $(STAMP)
	$(PY) experiments/rehearse.py --kind coco $(REHEARSE_ARGS)

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

# Scaling out (README "Scaling out"): a PostgreSQL cluster in $(PG_DIR)/ (socket only unless
# PG_LISTEN is set) with the databases mlflow and optuna, and one MLflow server on it.
PG_DIR ?= .postgres
PG_PORT ?= 5432
PG_LISTEN ?=
MLFLOW_BACKEND ?= postgresql://postgres@/mlflow?host=$(CURDIR)/$(PG_DIR)/sock&port=$(PG_PORT)
MLFLOW_ARTIFACTS ?= mlartifacts-server
MLFLOW_HOST ?= 127.0.0.1
MLFLOW_PORT ?= 5000
MLFLOW_ALLOWED_HOSTS ?=

postgres: $(STAMP)
	$(PY) -m dfa.local_postgres start $(PG_DIR) --port $(PG_PORT) --listen '$(PG_LISTEN)' --db mlflow --db optuna

postgres-stop: $(STAMP)
	$(PY) -m dfa.local_postgres stop $(PG_DIR)

# Starts the local PostgreSQL first when MLFLOW_BACKEND is the default (its socket).
mlflow-server: $(STAMP)
	$(if $(findstring $(PG_DIR)/sock,$(MLFLOW_BACKEND)),$(MAKE) --no-print-directory postgres,)
	$(PY) -m dfa.tracking_server --backend '$(MLFLOW_BACKEND)' --artifacts '$(MLFLOW_ARTIFACTS)' \
	  --host $(MLFLOW_HOST) --port $(MLFLOW_PORT) $(if $(MLFLOW_ALLOWED_HOSTS),--allowed-hosts '$(MLFLOW_ALLOWED_HOSTS)',)
