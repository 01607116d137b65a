"""A two-day Airflow 3 backfill run by a real scheduler, with a training task killed mid-fit.

The world is a 160-user slice of MovieLens-1M, with nothing in the lake yet. A real
api-server, scheduler (LocalExecutor) and dag-processor run ``airflow backfill create``
over the last two consecutive landed days: the first day's run bootstraps the lake with
all history up to it and promotes a first model. While the second day's ``train`` task is
inside ``SparkXGBRanker.fit``, the test SIGKILLs the task's process, as the OOM killer or
a lost node would. Airflow marks the try failed and retries it, and every day must end
green, each day's outputs keyed by its date, with nothing duplicated. Then the first day
is backfilled again, behind the second day's production model.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import closing, suppress
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import psutil
import pytest
import worlds

from pipelines import catalog
from pipelines.config import Settings

pytestmark = pytest.mark.e2e

DAG_ID = "ranker_training"
# Whole DAG runs (~3 min each, a JVM per task): the day whose train task is killed comes
# after a normal day. Every day is promoted (the world's gate tolerates any loss against
# production, below), so the re-run of the first day always meets a newer production model,
# the freshness check the last test is about; with the default gate, ML noise decided that.
BACKFILL_DAYS = 2  # the first bootstraps the lake
KILLED_DAY = 1  # index into the backfilled days of the day whose train task is killed
KILL_WHEN = "Running xgboost"  # xgboost.spark logs this as fit's Spark job starts
BACKFILL_TIMEOUT_S = 45 * 60


@dataclass
class World:
    settings: Settings
    env: dict[str, str]
    days: list[date]
    logs: Path
    kill: dict = field(default_factory=dict)


def _free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def consecutive_days(landed: list[date], n: int) -> list[date]:
    """The last ``n`` consecutive calendar days that all have a landed partition."""
    for end in range(len(landed) - 1, n - 2, -1):
        window = landed[end - n + 1 : end + 1]
        if window[-1] - window[0] == timedelta(days=n - 1):
            return window
    raise AssertionError(f"no {n} consecutive landed days")


def _run_id(day: date) -> str:
    return f"backfill__{day.isoformat()}T00:00:00+00:00"


def _query(env: dict[str, str], sql: str, *args: object) -> list[tuple]:
    db = Path(env["AIRFLOW_HOME"]) / "airflow.db"
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as conn:
        return conn.execute(sql, args).fetchall()


def _task_log(world: World, day: date, task: str, attempt: int) -> Path:
    return (
        world.logs / f"dag_id={DAG_ID}" / f"run_id={_run_id(day)}" / f"task_id={task}"
    ) / f"attempt={attempt}.log"


def _start(name: str, args: list[str], env: dict[str, str], logs: Path) -> subprocess.Popen:
    out = (logs / f"{name}.out").open("w")
    return subprocess.Popen(
        [str(worlds.BIN / "airflow"), *args],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so teardown reaches its children
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[World]:
    data_dir = tmp_path_factory.mktemp("backfill")
    api_port = _free_port()
    env = worlds.project_env(
        data_dir,
        CR_SAMPLE_USERS="160",
        CR_N_ESTIMATORS="80",
        # 160 users make a few to a few hundred events a day: day-to-day volume and the
        # share of never-seen items swing far beyond what a full feed allows.
        CR_VOLUME_MIN_RATIO="0",
        CR_VOLUME_MAX_RATIO="1000",
        CR_MAX_UNKNOWN_ITEM_SHARE="1",
        # Promote every candidate that beats the baselines: this module is about scheduling,
        # retries and dates, and its last test needs the later day in production.
        CR_PRODUCTION_TOLERANCE="1",
        CR_SLICE_MAX_DROP="1",
        AIRFLOW__CORE__EXECUTOR="LocalExecutor",
        AIRFLOW__CORE__PARALLELISM="2",  # as `make airflow`: two cores
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://127.0.0.1:{api_port}/execution/",
        AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(_free_port()),
        AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY="2",
        AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE="False",  # only the backfill's runs
        AIRFLOW__API__EXPOSE_CONFIG="False",
    )
    settings = Settings(data_dir=data_dir, sample_users=160)
    worlds.bootstrap(env)
    landed = catalog.LANDING.dates(settings)
    days = consecutive_days(landed, BACKFILL_DAYS)

    logs = data_dir / "airflow" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs = [
        _start(
            "api-server", ["api-server", "--host", "127.0.0.1", "--port", str(api_port)], env, logs
        ),
        _start("scheduler", ["scheduler"], env, logs),
        _start("dag-processor", ["dag-processor"], env, logs),
    ]
    try:
        yield World(settings, env, days, logs)
    finally:
        for proc in procs:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def _kill_train_mid_fit(world: World, day: date) -> bool:
    """SIGKILL ``day``'s first ``train`` try once its log shows the fit running."""
    log = _task_log(world, day, "train", 1)
    if not log.exists() or KILL_WHEN not in log.read_text(errors="replace"):
        return False
    rows = _query(
        world.env,
        "select pid, try_number, state from task_instance "
        "where dag_id = ? and run_id = ? and task_id = 'train'",
        DAG_ID,
        _run_id(day),
    )
    pid, try_number, state = rows[0]
    try:
        process = psutil.Process(pid)
        title = " ".join(process.cmdline())
    except psutil.NoSuchProcess as gone:
        raise AssertionError(f"train ended before the kill landed ({state})") from gone
    assert title.startswith("airflow worker"), title  # the task runner, not the supervisor
    jvm = [c.pid for c in process.children(recursive=True) if c.name() == "java"]
    process.send_signal(signal.SIGKILL)
    world.kill.update(
        day=day.isoformat(), pid=pid, try_number=try_number, state=state, jvm=jvm, at=time.time()
    )
    return True


def _run_states(world: World) -> dict[str, str]:
    rows = _query(
        world.env,
        "select run_id, state from dag_run where dag_id = ? and run_type = 'backfill'",
        DAG_ID,
    )
    return dict(rows)


def _backfill(world: World, first: date, last: date, *extra: str) -> None:
    """``airflow backfill create`` over [first, last]; returns once every run has ended."""
    # Creation waits for the dag-processor to have serialized the DAG, and for an
    # earlier backfill to be marked complete (one running backfill per DAG).
    for _ in range(60):
        created = worlds.airflow(
            "backfill", "create", "--dag-id", DAG_ID,
            "--from-date", first.isoformat(), "--to-date", last.isoformat(),
            "--max-active-runs", "1", *extra,
            env=world.env, check=False,
        )  # fmt: skip
        if created.returncode == 0:
            break
        time.sleep(2)
    else:
        raise AssertionError(created.stderr[-3000:])
    worlds.airflow("dags", "unpause", DAG_ID, env=world.env)
    deadline = time.monotonic() + BACKFILL_TIMEOUT_S
    while time.monotonic() < deadline:
        if not world.kill and _kill_train_mid_fit(world, world.days[KILLED_DAY]):
            continue
        running = _query(world.env, "select count(*) from backfill where completed_at is null")
        if running == [(0,)]:
            return
        time.sleep(0.2 if not world.kill else 2)
    raise AssertionError(f"backfill did not finish in {BACKFILL_TIMEOUT_S} s: {_run_states(world)}")


@pytest.fixture(scope="module")
def backfill(world) -> dict[str, str]:
    """The backfilled days, oldest first; the run states when it ended."""
    _backfill(world, world.days[0], world.days[-1])
    return _run_states(world)


def test_every_backfilled_day_succeeds(world, backfill):
    assert backfill == {_run_id(d): "success" for d in world.days}, world.logs / "scheduler.out"


def test_the_killed_training_try_was_retried_and_recovered(world, backfill):
    day = world.days[KILLED_DAY]
    assert world.kill, "the train task was never seen inside fit"
    assert world.kill["day"] == day.isoformat() and world.kill["try_number"] == 1
    assert not psutil.pid_exists(world.kill["pid"])
    assert world.kill["jvm"], "the killed task had no Spark JVM under it"
    for jvm in world.kill["jvm"]:  # the killed driver's Spark JVM went with it
        assert not psutil.pid_exists(jvm)
    ((try_number, state),) = _query(
        world.env,
        "select try_number, state from task_instance "
        "where dag_id = ? and run_id = ? and task_id = 'train'",
        DAG_ID,
        _run_id(day),
    )
    assert (try_number, state) == (2, "success")
    assert KILL_WHEN in _task_log(world, day, "train", 2).read_text(errors="replace")
    training = catalog.TRAINING.load(world.settings, date=day)
    assert training.trees == 80


def test_each_day_is_keyed_by_its_date_and_nothing_is_duplicated(world, backfill):
    history = [d for d in catalog.LANDING.dates(world.settings) if d <= world.days[0]]
    for day in world.days:
        summary = catalog.SUMMARY.load(world.settings, date=day)
        assert summary.logical_date == day
        assert summary.run_id == _run_id(day)
        ingested = catalog.INGEST.load(world.settings, date=day).partitions
        assert ingested == (history if day == world.days[0] else [day])  # bootstrap, then a day
        part = catalog.LAKE.path(world.settings, date=day)
        raw = list(part.parent.iterdir())
        assert raw == [part]  # the day's partition holds its one part file, nothing else
        pd.testing.assert_frame_equal(
            pd.read_parquet(part),
            pd.read_parquet(catalog.LANDING.path(world.settings, date=day)),
        )
    partitions = catalog.LAKE.prefix(world.settings).glob("*/*.parquet")
    lake = pd.concat(pd.read_parquet(p) for p in partitions)
    assert not lake.duplicated().any()


def test_materialization_advanced_to_the_last_day(world, backfill):
    marks = catalog.WATERMARKS.load(world.settings).root
    last = world.days[-1] + timedelta(days=1)
    assert {v.date() for v in marks.values()} == {last}


def _offline_tables(settings: Settings) -> dict[str, pd.DataFrame]:
    return {
        kind: pd.read_parquet(catalog.FEATURE_TABLE.path(settings, kind=kind))
        for kind in ("user", "item")
    }


def test_backfilling_an_earlier_day_again_rolls_nothing_back(world, backfill):
    """Re-running the first backfilled day after the last: a backfill into the past.

    Its run must succeed without touching what the later days produced: the feature
    tables, the online store and the production model stay as they were.
    """
    day = world.days[0]
    pointer = catalog.PRODUCTION.path(world.settings).read_text()
    online, offline = worlds.online_rows(world.settings), _offline_tables(world.settings)

    _backfill(world, day, day, "--reprocess-behavior", "completed")

    assert _run_states(world)[_run_id(day)] == "success"
    (tries,) = _query(
        world.env,
        "select try_number from task_instance where dag_id = ? and run_id = ? and task_id = 'gate'",
        DAG_ID,
        _run_id(day),
    )
    assert tries == (2,)  # the gate really ran again
    summary = catalog.SUMMARY.load(world.settings, date=day)
    assert summary.promoted is False
    assert "at least as new as production" in summary.gate.reason
    assert catalog.PRODUCTION.path(world.settings).read_text() == pointer
    assert worlds.online_rows(world.settings) == online
    for name, table in _offline_tables(world.settings).items():
        pd.testing.assert_frame_equal(table, offline[name])
