#!/usr/bin/env bash
# Airflow as a cluster runs it: metadata in Postgres, CeleryExecutor with a Redis broker, and
# the api-server, scheduler, dag-processor and a Celery worker as separate processes, each
# with its pid and log under $CLUSTER_DIR. Run with the environment's settings loaded
# (`make cluster-up` does): the worker's tasks inherit them.
#   infra/cluster/airflow.sh up | down | status
set -euo pipefail

ACTION="${1:-status}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
AIRFLOW="${AIRFLOW_BIN:-$ROOT/.venv/bin/airflow}"
CLUSTER_DIR="${CLUSTER_DIR:-${CR_DATA_DIR:-$ROOT/.data}/cluster}"
API_PORT="${AIRFLOW__API__PORT:-8080}"
PG="${CR_POSTGRES_ADMIN_URL:-postgresql://postgres@127.0.0.1:5432/postgres}"

running() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {  # name, then the airflow arguments
    local name="$1"; shift
    local pid="$CLUSTER_DIR/$name.pid"
    if running "$pid"; then echo "$name already running (pid $(cat "$pid"))"; return; fi
    nohup "$AIRFLOW" "$@" > "$CLUSTER_DIR/logs/$name.log" 2>&1 &
    echo $! > "$pid"
}

stop() {  # a process and everything it started (gunicorn/uvicorn workers, celery children)
    local pid="$1"
    running "$pid" || { rm -f "$pid"; return; }
    local main; main="$(cat "$pid")"
    local children; children="$(pgrep -P "$main" || true)"
    kill "$main" 2>/dev/null || true
    for _ in $(seq 1 40); do running "$pid" || break; sleep 0.5; done
    running "$pid" && kill -9 "$main" 2>/dev/null || true
    # shellcheck disable=SC2086
    [[ -n "$children" ]] && kill -9 $children 2>/dev/null || true
    rm -f "$pid"
}

case "$ACTION" in
up)
    mkdir -p "$CLUSTER_DIR/logs" "$AIRFLOW_HOME"
    # The profile's Postgres databases (Airflow's metadata, Feast's registry), created once;
    # their names are the last part of the connection URLs.
    "$ROOT/.venv/bin/python" - "$PG" "${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN##*/}" \
        "${CR_FEAST_REGISTRY_URL##*/}" <<'PY'
import sys

import psycopg

with psycopg.connect(sys.argv[1], autocommit=True) as admin:
    for name in sys.argv[2:]:
        if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            admin.execute(f'CREATE DATABASE "{name}"')
PY
    "$AIRFLOW" db migrate > "$CLUSTER_DIR/logs/migrate.log" 2>&1 \
        || { tail -20 "$CLUSTER_DIR/logs/migrate.log" >&2; exit 1; }
    start airflow-api-server api-server --port "$API_PORT"
    start airflow-scheduler scheduler
    start airflow-dag-processor dag-processor
    start airflow-celery-worker celery worker --concurrency "${AIRFLOW__CELERY__WORKER_CONCURRENCY:-1}"
    for _ in $(seq 1 120); do
        if curl -fsS "http://127.0.0.1:$API_PORT/api/v2/monitor/health" > /dev/null 2>&1; then
            echo "Airflow up: api-server :$API_PORT, scheduler, dag-processor, celery worker"
            exit 0
        fi
        sleep 1
    done
    echo "the Airflow api-server did not answer; logs in $CLUSTER_DIR/logs" >&2
    tail -20 "$CLUSTER_DIR"/logs/airflow-*.log >&2
    exit 1
    ;;
down)
    for pid in "$CLUSTER_DIR"/airflow-*.pid; do
        [[ -f "$pid" ]] && stop "$pid"
    done
    echo "Airflow stopped"
    ;;
status)
    for pid in "$CLUSTER_DIR"/airflow-*.pid; do
        [[ -f "$pid" ]] || continue
        name="$(basename "$pid" .pid)"
        running "$pid" && echo "$name: running (pid $(cat "$pid"))" || echo "$name: stopped"
    done
    ;;
*)
    echo "usage: $0 up|down|status" >&2
    exit 2
    ;;
esac
