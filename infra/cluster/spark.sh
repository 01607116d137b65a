#!/usr/bin/env bash
# A Spark standalone cluster from pyspark's own jars: one master and SPARK_WORKERS workers,
# each a background JVM started with `spark-class`, its pid and log under $CLUSTER_DIR.
#   infra/cluster/spark.sh up | down | status
# Ports (override by environment): master 7077, master UI 8090, worker UIs 8091.. (Airflow's
# api-server keeps 8080).
set -euo pipefail

ACTION="${1:-status}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PYTHON="${PYSPARK_PYTHON:-$ROOT/.venv/bin/python}"
CLUSTER_DIR="${CLUSTER_DIR:-${CR_DATA_DIR:-.data}/cluster}"
HOST="${SPARK_MASTER_HOST:-127.0.0.1}"
PORT="${SPARK_MASTER_PORT:-7077}"
UI_PORT="${SPARK_MASTER_WEBUI_PORT:-8090}"
WORKERS="${SPARK_WORKERS:-2}"
WORKER_CORES="${SPARK_WORKER_CORES:-1}"
WORKER_MEMORY="${SPARK_WORKER_MEMORY:-3g}"
export SPARK_LOCAL_IP="$HOST"
export SPARK_LOG_DIR="$CLUSTER_DIR/logs"
export SPARK_WORKER_DIR="$CLUSTER_DIR/work"

running() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {  # name, then the spark-class arguments
    local name="$1"; shift
    local pid="$CLUSTER_DIR/$name.pid"
    if running "$pid"; then echo "$name already running (pid $(cat "$pid"))"; return; fi
    nohup "$SPARK_HOME/bin/spark-class" "$@" > "$SPARK_LOG_DIR/$name.log" 2>&1 &
    echo $! > "$pid"
}

alive_workers() {
    curl -fsS "http://$HOST:$UI_PORT/json/" 2>/dev/null \
        | "$PYTHON" -c 'import json, sys; print(sum(w["state"] == "ALIVE" for w in json.load(sys.stdin)["workers"]))' \
        2>/dev/null || echo 0
}

case "$ACTION" in
up)
    SPARK_HOME="${SPARK_HOME:-$("$PYTHON" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')}"
    export SPARK_HOME
    mkdir -p "$SPARK_LOG_DIR" "$SPARK_WORKER_DIR"
    start spark-master org.apache.spark.deploy.master.Master \
        --host "$HOST" --port "$PORT" --webui-port "$UI_PORT"
    for i in $(seq 1 "$WORKERS"); do
        start "spark-worker-$i" org.apache.spark.deploy.worker.Worker "spark://$HOST:$PORT" \
            --host "$HOST" --cores "$WORKER_CORES" --memory "$WORKER_MEMORY" \
            --webui-port "$((UI_PORT + i))" --work-dir "$SPARK_WORKER_DIR"
    done
    for _ in $(seq 1 120); do
        [[ "$(alive_workers)" -ge "$WORKERS" ]] && { echo "spark://$HOST:$PORT: $WORKERS workers alive"; exit 0; }
        sleep 1
    done
    echo "the Spark cluster did not come up; logs in $SPARK_LOG_DIR" >&2
    tail -20 "$SPARK_LOG_DIR"/*.log >&2
    exit 1
    ;;
down)
    for pid in "$CLUSTER_DIR"/spark-*.pid; do
        [[ -f "$pid" ]] || continue
        if running "$pid"; then
            kill "$(cat "$pid")"
            for _ in $(seq 1 30); do running "$pid" || break; sleep 0.5; done
            running "$pid" && kill -9 "$(cat "$pid")"
        fi
        rm -f "$pid"
    done
    echo "Spark cluster stopped"
    ;;
status)
    echo "master spark://$HOST:$PORT, workers alive: $(alive_workers)"
    ;;
*)
    echo "usage: $0 up|down|status" >&2
    exit 2
    ;;
esac
