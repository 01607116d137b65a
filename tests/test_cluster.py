"""The cluster profile's Spark: a standalone master and two workers started by
``infra/cluster/spark.sh`` (as ``make cluster-up`` does), a worker killed in the middle of
training, and the ranker trained on the recovered cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.config import PROJECT_ROOT

pytestmark = pytest.mark.cluster

SCRIPT = PROJECT_ROOT / "infra" / "cluster" / "spark.sh"
PORT, UI_PORT = 17077, 18090  # not the defaults, so a cluster someone left running is untouched
MASTER = f"spark://127.0.0.1:{PORT}"


def _env(cluster_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "CLUSTER_DIR": str(cluster_dir),
        "SPARK_MASTER_PORT": str(PORT),
        "SPARK_MASTER_WEBUI_PORT": str(UI_PORT),
        "SPARK_WORKER_MEMORY": "2g",
        "PYSPARK_PYTHON": sys.executable,
        "CR_DATA_DIR": str(cluster_dir / "data"),
    }


def _cluster(cluster_dir: Path, action: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), action], env=_env(cluster_dir), capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster_dir = tmp_path_factory.mktemp("cluster")
    up = _cluster(cluster_dir, "up")
    assert up.returncode == 0, up.stdout + up.stderr  # no Java or no ports: fail, never skip
    yield cluster_dir
    down = _cluster(cluster_dir, "down")
    assert down.returncode == 0, down.stderr
    assert not list(cluster_dir.glob("*.pid"))


def _job(cluster_dir: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(PROJECT_ROOT / "tests" / "cluster_job.py"), MASTER],
        env=_env(cluster_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # XGBoost logs its start on stdout, Spark on stderr
        text=True,
    )


def _facts(stdout: str) -> dict:
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


def test_a_worker_killed_during_training_fails_the_try_and_the_retry_succeeds(cluster):
    """XGBoost trains in a barrier stage that needs both workers' slots: with one gone, the
    try fails (it never hangs), and once the worker is back, as a supervisor restarts it,
    the retry trains the ranker on the cluster, an executor on each worker."""
    job = _job(cluster)
    log = []
    deadline = time.monotonic() + 300
    for line in job.stdout:  # wait until XGBoost is fitting on the executors
        log.append(line)
        if "Running xgboost" in line or time.monotonic() > deadline:
            break
    assert any("Running xgboost" in line for line in log), "".join(log)[-3000:]
    worker = cluster / "spark-worker-1.pid"
    os.kill(int(worker.read_text()), signal.SIGKILL)
    out, _ = job.communicate(timeout=600)
    killed = job.returncode

    up = _cluster(cluster, "up")  # restarts the dead worker
    assert up.returncode == 0, up.stdout + up.stderr
    retry = _job(cluster)
    retry_out, _ = retry.communicate(timeout=600)

    assert retry.returncode == 0, retry_out[-3000:]
    facts = _facts(retry_out)
    assert facts["master"] == MASTER
    assert facts["executors"] == 2  # one per worker: the training ran on the cluster
    assert facts["trees"] == 20
    assert facts["score_label_corr"] > 0.5  # it learned the planted signal
    if killed == 0:  # Spark recovered within the try: then it must have trained fully
        assert _facts(out)["trees"] == 20
