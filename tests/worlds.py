"""Helpers for the end-to-end tests: a throwaway project world driven through real CLIs."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from datetime import date
from pathlib import Path

from pipelines.config import PROJECT_ROOT, Settings

BIN = Path(sys.executable).parent


def project_env(data_dir: Path, **overrides: str) -> dict[str, str]:
    """The environment `make` gives the CLIs, pointed at ``data_dir``."""
    env = dict(os.environ)
    env |= {
        "CR_DATA_DIR": str(data_dir),
        "AIRFLOW_HOME": str(data_dir / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "BENTOML_HOME": str(data_dir / "bentoml"),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    return env | overrides


def run(cmd: list[str], env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def airflow(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    return run([str(BIN / "airflow"), *args], env, check=check)


def bootstrap(env: dict[str, str]) -> None:
    """Land the data set and migrate Airflow's metadata DB."""
    run([sys.executable, "-m", "pipelines.cli", "bootstrap"], env)
    airflow("db", "migrate", env=env)


def dag_test(env: dict[str, str], day: date) -> subprocess.CompletedProcess:
    """One in-process DAG run (``airflow dags test``) for ``day``; never raises."""
    return airflow("dags", "test", "ranker_training", day.isoformat(), env=env, check=False)


def online_rows(settings: Settings) -> list[tuple]:
    """Every (table, entity, feature, value, feature time) in Feast's SQLite online store."""
    with closing(sqlite3.connect(settings.feast_dir / "online_store.db")) as db:
        tables = [r[0] for r in db.execute("select name from sqlite_master where type='table'")]
        return sorted(
            (t, *row)
            for t in tables
            for row in db.execute(f'select entity_key, feature_name, value, event_ts from "{t}"')
        )
