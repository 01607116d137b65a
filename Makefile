# content-ranker. Quickstart: `make run`, then `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := run

DATASET ?= ml-1m
export CR_DATASET := $(DATASET)
# The environment: infra/$(INFRA)/settings.env is read here and exported to every command.
# local = Spark local[2], SQLite, `airflow dags test`; cluster = see "Running on a cluster".
INFRA ?= local
include infra/$(INFRA)/settings.env
export $(shell sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)=.*/\1/p' infra/$(INFRA)/settings.env)
export CR_DATA_DIR ?= $(CURDIR)/$(if $(filter local,$(INFRA)),.data,.data-$(INFRA))
export AIRFLOW_HOME ?= $(CR_DATA_DIR)/airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__UNIT_TEST_MODE := False
export AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY ?= 60
# Replayed data (MovieLens ends in 2003) has no partition for today: locally the
# scheduler runs only what is asked for (`make dag`, `make backfill`), not @daily.
export AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE ?= False
# LocalExecutor keeps up to this many worker processes; the runs are sequential anyway.
export AIRFLOW__CORE__PARALLELISM ?= 2
export UV_COMPILE_BYTECODE := 1
export PYSPARK_PYTHON := $(CURDIR)/.venv/bin/python
export PYSPARK_DRIVER_PYTHON := $(CURDIR)/.venv/bin/python
export BENTOML_HOME := $(CR_DATA_DIR)/bentoml
export BENTOML_DO_NOT_TRACK := True
export SCARF_ANALYTICS := false

# uv from PATH, else the one `pip install uv` put beside python3 (evaluated when used).
UV = $(shell command -v uv 2>/dev/null || python3 -c "import uv; print(uv.find_uv_bin())" 2>/dev/null)
RUN = $(UV) run --frozen --no-sync
CLI = $(RUN) python -m pipelines.cli

.PHONY: uv install airflow-db bootstrap dag run cluster-up _cluster-up cluster-down _cluster-down serve airflow backfill test lint format bench-serve bench-predict bench-fold-in bench-training-set bench-pipeline rollback synth feast clean

install: .venv/.installed
.venv/.installed: pyproject.toml uv.lock | uv
	$(UV) sync --frozen
	@touch $@

uv:
	@command -v uv >/dev/null 2>&1 || python3 -c "import uv" 2>/dev/null || python3 -m pip install --quiet uv

airflow-db: install
	@mkdir -p "$(AIRFLOW_HOME)"
	$(RUN) airflow db migrate > "$(AIRFLOW_HOME)/migrate.log" 2>&1 || (tail -20 "$(AIRFLOW_HOME)/migrate.log"; exit 1)

bootstrap: install
	$(CLI) bootstrap

# One DAG run through Airflow, for the last landed day. Airflow calls a run that
# executed no task a success, so `check-run` then demands this run's summary and timings.
dag: airflow-db
ifeq ($(DAG_RUNNER),scheduler)
	@day="$$($(CLI) last-date)" && since="$$(date +%s)" && run_id="make__$${day}__$$since" && \
	set -x && $(CLI) trigger-run "$$day" --run-id "$$run_id" && \
	$(CLI) check-run "$$day" --since "$$since" --run-id "$$run_id"
else
	@day="$$($(CLI) last-date)" && since="$$(date +%s)" && set -x && \
	$(RUN) airflow dags test ranker_training "$$day" && \
	$(CLI) check-run "$$day" --since "$$since"
endif

run: $(if $(filter cluster,$(INFRA)),cluster-up) bootstrap dag
	$(CLI) demo

# The cluster profile's processes (infra/cluster): a Spark standalone master and 2 workers,
# then Airflow's api-server, scheduler, dag-processor and a Celery worker. Idempotent.
# Run with the cluster's settings and data directory, whatever INFRA this make has.
CLUSTER_DATA_DIR = $(if $(filter cluster,$(INFRA)),$(CR_DATA_DIR),$(CURDIR)/.data-cluster)
CLUSTER_MAKE = $(MAKE) --no-print-directory INFRA=cluster CR_DATA_DIR=$(CLUSTER_DATA_DIR) \
	AIRFLOW_HOME=$(CLUSTER_DATA_DIR)/airflow BENTOML_HOME=$(CLUSTER_DATA_DIR)/bentoml
cluster-up: install
	@$(CLUSTER_MAKE) _cluster-up
_cluster-up:
	@mkdir -p "$(CR_DATA_DIR)/cluster" "$(AIRFLOW_HOME)"
	@test -f "$(CR_DATA_DIR)/cluster/secrets.env" || \
	  echo "AIRFLOW__API_AUTH__JWT_SECRET=$$(python3 -c 'import secrets; print(secrets.token_hex(32))')" \
	  > "$(CR_DATA_DIR)/cluster/secrets.env"
	bash infra/cluster/spark.sh up
	set -a && source "$(CR_DATA_DIR)/cluster/secrets.env" && set +a && bash infra/cluster/airflow.sh up

cluster-down:
	@$(CLUSTER_MAKE) _cluster-down
_cluster-down:
	bash infra/cluster/airflow.sh down
	bash infra/cluster/spark.sh down

serve: install
	$(RUN) bentoml serve serving.service:Ranker --host 127.0.0.1 --port 3000

airflow: airflow-db
	$(RUN) airflow standalone

# One DAG run per day from FROM to TO (YYYY-MM-DD), run by the scheduler of `make airflow`
# (start that first, in another terminal). The DAG is unpaused so the runs start.
backfill: airflow-db
	@test -n "$(FROM)" -a -n "$(TO)" || (echo "usage: make backfill FROM=YYYY-MM-DD TO=YYYY-MM-DD"; exit 2)
	$(RUN) airflow backfill create --dag-id ranker_training --from-date $(FROM) --to-date $(TO) --max-active-runs 1
	$(RUN) airflow dags unpause ranker_training

# The feast CLI on this environment's Feast store: `make feast` (plan), `make feast ARGS=apply`,
# `make feast INFRA=cluster ARGS="ui -h 127.0.0.1"`. The repo reads no settings; the yaml does.
ARGS ?= plan
feast: install
	@mkdir -p "$(CR_DATA_DIR)/feast"
	$(RUN) feast -c features -f $(or $(CR_FEATURE_STORE_YAML),features/feature_store.yaml) $(ARGS)

rollback: install
	$(CLI) rollback

# A synthetic short-video impression feed in the generic format: make synth EVENTS=N OUT=DIR,
# then make run DATASET=DIR. SEED and DAYS are optional.
synth: install
	@test -n "$(EVENTS)" -a -n "$(OUT)" || (echo "usage: make synth EVENTS=N OUT=DIR"; exit 2)
	$(CLI) synth --events $(EVENTS) --out $(OUT) $(if $(SEED),--seed $(SEED)) $(if $(DAYS),--days $(DAYS))

# Load the real server over loopback (fast, Feast-SDK and echo paths, hot swap);
# writes benchmarks/results/serve.json. BENCH_ARGS=--quick for a short run.
bench-serve: install
	$(RUN) python -m benchmarks.serve_bench $(BENCH_ARGS)

# The model's CPU per /rank query: XGBoost's inplace_predict against the same trees compiled
# by Treelite, on the holdout of a finished `make run` (benchmarks/results/predict.json).
bench-predict: install
	$(RUN) python -m benchmarks.predict_bench $(BENCH_ARGS)

# The fold-in of fresh user rows, one user at a time against many at once, on the factor
# snapshots of a finished `make run`; writes benchmarks/results/fold_in.json.
bench-fold-in: install
	$(RUN) python -m benchmarks.fold_in_bench $(BENCH_ARGS)

# The training set's point-in-time join, Feast's file store against the Spark as-of join,
# on the data of a finished `make run`; writes benchmarks/results/training_set.json.
bench-training-set: install
	$(RUN) python -m benchmarks.training_set_bench $(BENCH_ARGS)

# The whole DAG on 1M, 4M and 16M synthetic events (one `airflow dags test` each, in data dirs
# under $(CR_DATA_DIR)/bench-pipeline) and on ML-1M with the training-set comparison; writes
# benchmarks/results/pipeline.json and pipeline.png. BENCH_ARGS=--quick: 50k and 200k only.
bench-pipeline: install
	$(RUN) python -m benchmarks.pipeline_bench $(BENCH_ARGS)

lint: install
	$(RUN) ruff check .
	$(RUN) ruff format --check .

format: install
	$(RUN) ruff format .
	$(RUN) ruff check --fix .

# Two workers, each taking whole modules (their worlds are module fixtures), slowest first
# (tests/conftest.py). TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= 2
test: lint
	$(RUN) pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

clean:
	rm -rf .data
