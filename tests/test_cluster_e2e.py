"""The cluster profile end to end (``infra/cluster``), with two of its faults.

Every engine is real and started as ``make cluster-up`` starts it: a Spark standalone
master and two workers (``spark.sh``), Airflow's api-server, scheduler, dag-processor and
a Celery worker (``airflow.sh``) on Postgres with a Redis broker, Feast's registry in
Postgres and its online store in Redis. The slice is ``tests/test_e2e.py``'s: 160 users
of MovieLens-1M.

The scheduler runs one DAG run, triggered through the REST API as ``make run
INFRA=cluster`` triggers it. While its ``train`` task is fitting, the Celery worker and
everything under it are SIGKILLed, as a lost node would be; a supervisor starts a new
worker, the scheduler fails the orphaned try, and the retry finishes the run. The promoted
model is then served from Redis, and Redis is shut down and restarted under load.

Nothing here touches the machine's own databases: Postgres databases and a redis-server
of the test's own, dropped and stopped afterwards. A missing service fails the module.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import httpx
import psutil
import pytest
import worlds

from pipelines import catalog
from pipelines.cli import RUN_STAGES
from pipelines.config import PROJECT_ROOT, Settings

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

INFRA = PROJECT_ROOT / "infra" / "cluster"
POSTGRES = os.environ.get("CR_TEST_POSTGRES", "postgres@127.0.0.1:5432")
SPARK_PORT, SPARK_UI_PORT = 17177, 18190  # not test_cluster's, nor the profile's defaults
DAG_ID = "ranker_training"
KILL_WHEN = "Running xgboost"  # xgboost.spark logs this as fit's Spark job starts
RUN_TIMEOUT_S = 30 * 60


def _free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def profile_env() -> dict[str, str]:
    """``infra/cluster/settings.env`` as the Makefile exports it."""
    env = {}
    for line in (INFRA / "settings.env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


class Redis:
    """A redis-server of the test's own that can be shut down and started again with its
    data (``SHUTDOWN SAVE``, then the same dump file), as an operator restarts one."""

    def __init__(self, workdir: Path):
        self.port, self.dir, self.proc = _free_port(), workdir, None
        workdir.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), "--dbfilename", "dump.rdb"],
            stdout=(self.dir / "redis.log").open("a"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        client = redis.Redis(port=self.port)
        for _ in range(200):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise AssertionError(f"redis-server did not start: {(self.dir / 'redis.log').read_text()}")

    def shutdown(self) -> None:
        import redis

        with suppress(redis.ConnectionError):  # SHUTDOWN drops its connection
            redis.Redis(port=self.port).shutdown(save=True)
        self.proc.wait(timeout=30)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextmanager
def postgres_databases(*names: str) -> Iterator[None]:
    import psycopg

    with psycopg.connect(f"postgresql://{POSTGRES}/postgres", autocommit=True) as admin:
        for name in names:
            admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield
        finally:
            for name in names:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Cluster:
    settings: Settings
    env: dict[str, str]
    overrides: dict[str, str]  # of infra/cluster/settings.env, on make's command line
    api: str
    redis: Redis
    day: date | None = None
    run_id: str | None = None
    kill: dict = field(default_factory=dict)

    def make(self, target: str) -> list[str]:
        return ["make", "-C", str(PROJECT_ROOT), "--no-print-directory", target,
                "INFRA=cluster", *(f"{k}={v}" for k, v in self.overrides.items())]  # fmt: skip

    @property
    def cluster_dir(self) -> Path:
        return self.settings.data_dir / "cluster"  # spark.sh's and airflow.sh's default

    def task_instances(self) -> dict[str, dict]:
        url = f"{self.api}/api/v2/dags/{DAG_ID}/dagRuns/{self.run_id}/taskInstances"
        body = httpx.get(url, timeout=30).json()
        return {t["task_id"]: t for t in body["task_instances"]}

    def task_log(self, task: str, attempt: int) -> Path:
        logs = Path(self.env["AIRFLOW_HOME"]) / "logs" / f"dag_id={DAG_ID}"
        return logs / f"run_id={self.run_id}" / f"task_id={task}" / f"attempt={attempt}.log"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    """The profile's settings with the test's own ports, databases and redis-server, passed
    to ``make`` as command-line overrides of ``infra/cluster/settings.env``."""
    data_dir = tmp_path_factory.mktemp("cluster-e2e")
    suffix = uuid.uuid4().hex[:8]
    airflow_db, feast_db = f"cr_test_airflow_{suffix}", f"cr_test_feast_{suffix}"
    redis = Redis(data_dir / "redis")
    api_port = _free_port()
    pg = f"postgresql+psycopg://{POSTGRES}"
    overrides = dict(
        CR_DATA_DIR=str(data_dir),
        CR_SPARK_MASTER=f"spark://127.0.0.1:{SPARK_PORT}",
        CR_FEAST_REGISTRY_URL=f"{pg}/{feast_db}",
        CR_REDIS_CONNECTION=f"127.0.0.1:{redis.port},db=0,socket_timeout=0.1,socket_connect_timeout=0.1",
        CR_AIRFLOW_API=f"http://127.0.0.1:{api_port}",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"{pg}/{airflow_db}",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC=f"{pg}/{airflow_db}",
        AIRFLOW__CELERY__BROKER_URL=f"redis://127.0.0.1:{redis.port}/1",
        AIRFLOW__CELERY__RESULT_BACKEND=f"db+{pg}/{airflow_db}",
        AIRFLOW__API__PORT=str(api_port),
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://127.0.0.1:{api_port}/execution/",
        # The orphaned try of a killed worker is failed after this long without a heartbeat.
        AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT="20",
    )  # fmt: skip
    env = worlds.project_env(data_dir, **profile_env()) | overrides
    env |= dict(  # read by the scripts and Airflow from the environment only
        CR_SAMPLE_USERS="160",
        CR_N_ESTIMATORS="80",
        SPARK_MASTER_PORT=str(SPARK_PORT),
        SPARK_MASTER_WEBUI_PORT=str(SPARK_UI_PORT),
        SPARK_WORKER_MEMORY="2g",
        AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(_free_port()),
        AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY="2",
        COLUMNS="250",  # rich's console: make's summary lines unwrapped
    )
    settings = Settings(data_dir=data_dir, sample_users=160)
    world = Cluster(settings, env, overrides, env["CR_AIRFLOW_API"], redis)
    with postgres_databases(airflow_db, feast_db):
        try:
            redis.start()
            yield world
        finally:
            subprocess.run(world.make("cluster-down"), env=env, capture_output=True)
            redis.kill()
    assert not list(world.cluster_dir.glob("*.pid"))


def _kill_worker_mid_fit(world: Cluster) -> bool:
    """SIGKILL the Celery worker and every process under it once ``train`` is fitting."""
    log = world.task_log("train", 1)
    if not log.exists() or KILL_WHEN not in log.read_text(errors="replace"):
        return False
    worker = psutil.Process(int((world.cluster_dir / "airflow-celery-worker.pid").read_text()))
    tree = [worker, *worker.children(recursive=True)]
    for process in tree:
        with suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGKILL)
    world.kill.update(pids=[p.pid for p in tree], jvm=[p.pid for p in tree if _is_java(p)])
    # The supervisor: `make cluster-up` starts what is not running, here a new worker.
    restarted = subprocess.run(world.make("cluster-up"), env=world.env, capture_output=True)
    assert restarted.returncode == 0, restarted.stdout[-3000:] + restarted.stderr[-3000:]
    return True


def _is_java(process: psutil.Process) -> bool:
    with suppress(psutil.NoSuchProcess):
        return process.name() == "java"
    return False


def _run_id(world: Cluster) -> str | None:
    """The id of the DAG run ``make`` triggered, once the api-server knows it."""
    try:
        url = f"{world.api}/api/v2/dags/{DAG_ID}/dagRuns"
        runs = httpx.get(url, timeout=10).json().get("dag_runs", [])
    except (httpx.HTTPError, ValueError):
        return None
    return runs[0]["dag_run_id"] if len(runs) == 1 else None


@pytest.fixture(scope="module")
def run(cluster) -> str:
    """``make run INFRA=cluster``, exactly as documented plus the test's overrides: it starts
    the cluster, bootstraps, has the scheduler run the DAG for the last landed day, checks
    the run and ranks through the server. The Celery worker is killed while ``train`` fits.
    Returns make's output."""
    log = cluster.cluster_dir.parent / "make-run.out"
    with log.open("w") as out:
        make = subprocess.Popen(
            cluster.make("run"), env=cluster.env, stdout=out, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while make.poll() is None and time.monotonic() < deadline:
            cluster.run_id = cluster.run_id or _run_id(cluster)
            if cluster.run_id and not cluster.kill and _kill_worker_mid_fit(cluster):
                continue
            time.sleep(0.5)
        if make.poll() is None:
            make.kill()
        make.wait()
    output = log.read_text()
    assert make.returncode == 0, output[-5000:]
    cluster.day = catalog.LANDING.dates(cluster.settings)[-1]
    return output


def test_make_run_infra_cluster_runs_the_dag_on_celery_and_spark_and_promotes(cluster, run):
    assert (
        f"run {cluster.day} ({cluster.run_id}) ran {len(RUN_STAGES)} stages" in run
    )  # make's check-run
    production = catalog.PRODUCTION.load(cluster.settings).tag
    assert re.search(rf"model: {re.escape(production)}\s+promoted: True", run)  # make's report
    tasks = cluster.task_instances()
    assert {t["state"] for t in tasks.values()} == {"success"}, tasks
    assert all(t["executor"] in (None, "CeleryExecutor") for t in tasks.values())
    assert all(t["queue"] == "default" for t in tasks.values())  # Celery's queue
    summary = catalog.SUMMARY.load(cluster.settings, date=cluster.day)
    assert summary.run_id == cluster.run_id
    assert summary.promoted is True, summary.gate
    assert summary.infra_validation.passed is True
    assert catalog.PRODUCTION.load(cluster.settings).tag == summary.model_tag
    # Spark's work ran on the standalone cluster's executors, one application per task.
    master = httpx.get(f"http://127.0.0.1:{SPARK_UI_PORT}/json/", timeout=10).json()
    apps = master["completedapps"] + master["activeapps"]
    assert len(apps) >= 5, apps
    assert all(app["cores"] >= 1 for app in apps)
    assert master["aliveworkers"] == 2


def test_a_killed_celery_worker_loses_no_run(cluster, run):
    assert cluster.kill, "the train task was never seen inside fit"
    for pid in cluster.kill["pids"]:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    train = cluster.task_instances()["train"]
    assert (train["try_number"], train["state"]) == (2, "success")
    assert KILL_WHEN in cluster.task_log("train", 2).read_text(errors="replace")
    assert catalog.TRAINING.load(cluster.settings, date=cluster.day).trees == 80


@dataclass
class Served:
    base: str
    body: dict  # a known user with online features, and 100 known items


@pytest.fixture(scope="module")
def server(cluster, run) -> Iterator[Served]:
    """The promoted model behind a real ``bentoml serve`` on the profile's Feast store."""
    import pandas as pd

    from pipelines.infra_validation import serve

    users = pd.read_parquet(catalog.USER_IDS.path(cluster.settings))["external_id"]
    items = pd.read_parquet(catalog.ITEM_IDS.path(cluster.settings))["external_id"]
    item_ids = [str(i) for i in items.iloc[:100]]
    keys = ("CR_FEATURE_STORE_YAML", "CR_FEAST_REGISTRY_URL", "CR_REDIS_CONNECTION")
    with pytest.MonkeyPatch.context() as mp:
        for key in keys:
            mp.setenv(key, cluster.env[key])
        with serve(cluster.settings, None) as base:
            for user in users.iloc[:50]:
                body = {"user_id": str(user), "item_ids": item_ids}
                if not httpx.post(f"{base}/rank", json=body, timeout=10).json()["fallback"]:
                    yield Served(base, body)
                    return
            raise AssertionError("none of 50 users had online features")


def test_rank_is_served_from_redis(cluster, server):
    import redis

    assert redis.Redis(port=cluster.redis.port).dbsize() > 0  # Feast's rows are in Redis
    resp = httpx.post(f"{server.base}/rank", json=server.body, timeout=10)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model_version"] == catalog.PRODUCTION.load(cluster.settings).tag
    assert body["fallback"] is False and body["online_store_unavailable"] is False
    assert len(body["items"]) == 100


def test_redis_shut_down_under_load_gives_flagged_fallbacks_never_a_5xx(cluster, server):
    """Redis goes away while /rank is under load, and comes back with its data: every
    request answers within its timeout, with a flagged popularity fallback (or a clear
    503), never a 500; once Redis is back, the next requests have features again."""
    with worlds.Load(f"{server.base}/rank", server.body) as load:
        time.sleep(2)
        down_at = time.monotonic()
        cluster.redis.shutdown()  # returns once the server has exited
        gone_at = time.monotonic()
        time.sleep(3)
        up_at = time.monotonic()
        cluster.redis.start()
        # Each pooled connection fails once on the old socket, then reconnects.
        back_at = load.wait_for_features(up_at)
        time.sleep(1)
    worlds.assert_store_outage_was_served(load, down_at, gone_at, up_at, back_at, items=100)
