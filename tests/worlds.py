"""Helpers for the end-to-end tests: a throwaway project world driven through real CLIs."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from datetime import date
from pathlib import Path

from pipelines import catalog
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
        # a model per ablated signal costs a training each; test_e2e turns it on
        "CR_ABLATION": "false",
        # one ALS snapshot per run (the serving one; ~12 s a fit on a small slice here),
        # not the grid's six: test_e2e runs the grid
        "CR_ALS_EVERY_DAYS": "100000",
        "CR_ALS_ITERATIONS": "5",  # half the default's steps: the tests check wiring, not fit
    }
    return env | overrides


def use_env(monkeypatch, env: dict[str, str]) -> None:
    """Give ``pipelines.tasks`` called in this process the settings the world's DAG runs had:
    every ``CR_`` variable of ``env`` (and BentoML's home), not only its data dir. A task
    re-run with other settings (say the ALS iterations) rightly refits, and then its output
    differs from the DAG's. Pair with ``config.get_settings.cache_clear()`` afterwards."""
    from pipelines import config

    for key, value in env.items():
        if key.startswith("CR_") or key == "BENTOML_HOME":
            monkeypatch.setenv(key, value)
    config.get_settings.cache_clear()


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


def new_users_dataset(
    out: Path, *, users: int = 300, items: int = 200, days: int = 90, seed: int = 1995
) -> dict:
    """Write a small 1995 data set in the generic format in which most users are new.

    Like MovieLens-100k (1997-98): each user joins on a day of the span, rates nearly all
    they will ever rate that day or the next, and only a quarter come back once later.
    So on a query day most users have no feature history yet. Ratings (1-5) follow a
    planted taste (the user's genre mix against the item's genres, plus item quality),
    and items are picked by Zipf popularity, so a ranker has something to learn.
    Deterministic for a seed. Returns the source folder's facts (rows, first/last date).
    """
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    genres = ["Action", "Comedy", "Drama", "Romance", "Thriller", "Sci-Fi", "Horror", "Children"]
    item_genres = [
        rng.choice(len(genres), size=int(rng.integers(1, 3)), replace=False) for _ in range(items)
    ]
    quality = rng.normal(0.0, 1.0, items)
    popularity = 1.0 / np.arange(1, items + 1) ** 0.8
    popularity = rng.permutation(popularity / popularity.sum())
    start = int(pd.Timestamp("1995-01-01", tz="UTC").timestamp())
    rows = []
    for user in range(users):
        taste = rng.dirichlet(np.full(len(genres), 0.5))
        joined = int(rng.integers(0, days - 1))
        first, later = int(rng.integers(8, 30)), int(rng.integers(3, 8))
        picked = rng.choice(items, size=first + later, replace=False, p=popularity)
        rated_on = np.where(rng.random(first) < 0.8, joined, joined + 1).tolist()
        if rng.random() < 0.25 and joined + 2 < days:  # comes back once, on a later day
            rated_on += [int(rng.integers(joined + 2, days))] * later
        for item, day in zip(picked, rated_on, strict=False):
            match = taste[item_genres[item]].sum()
            score = 2.0 + 4.0 * match + 0.8 * quality[item] + rng.normal(0.0, 0.5)
            rows.append(
                {
                    "user_id": f"u{user:03d}",
                    "item_id": f"m{item:03d}",
                    "rating": float(np.clip(np.rint(score), 1, 5)),
                    "timestamp": start + day * 86_400 + int(rng.integers(0, 86_400)),
                }
            )
    interactions = pd.DataFrame(rows).sort_values("timestamp", kind="stable")
    catalogue = pd.DataFrame(
        {
            "item_id": [f"m{i:03d}" for i in range(items)],
            "title": [f"Movie {i} (1995)" for i in range(items)],
            "genres": ["|".join(genres[g] for g in gs) for gs in item_genres],
            "year": rng.integers(1930, 1996, items),
        }
    )
    out.mkdir(parents=True, exist_ok=True)
    interactions.to_parquet(catalog.INTERACTIONS.path(out), index=False)
    catalogue.to_parquet(catalog.ITEMS.path(out), index=False)
    days_seen = pd.to_datetime(interactions["timestamp"], unit="s", utc=True).dt.date
    return {
        "rows": len(interactions),
        "first_date": min(days_seen),
        "last_date": max(days_seen),
    }


class Load:
    """Requests from 4 threads, back to back, each recording (time, status, body or error)."""

    def __init__(self, url: str, body: dict):
        self.url, self.body, self.records, self.stop = url, body, [], threading.Event()
        self.threads = [threading.Thread(target=self._loop) for _ in range(4)]

    def _loop(self) -> None:
        import httpx

        with httpx.Client(timeout=5) as client:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    resp = client.post(self.url, json=self.body)
                    body = resp.json() if resp.status_code == 200 else resp.text
                    self.records.append(
                        (started, time.monotonic() - started, resp.status_code, body)
                    )
                except httpx.HTTPError as error:
                    self.records.append((started, time.monotonic() - started, None, repr(error)))

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()

    def within(self, start: float, end: float) -> list[tuple]:
        """The requests sent and answered inside [start, end)."""
        return [r for r in self.records if start <= r[0] and r[0] + r[1] < end]

    def wait_for_features(self, since: float, timeout_s: float = 30) -> float:
        """Once the store is back: wait for 8 answers in a row with features; returns when."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            recent = self.within(since, time.monotonic())[-8:]
            if len(recent) == 8 and all(has_features(r) for r in recent):
                break
            time.sleep(0.2)
        return time.monotonic()


def has_features(record: tuple) -> bool:
    _, _, status, body = record
    return status == 200 and not body["online_store_unavailable"] and not body["fallback"]


def assert_store_outage_was_served(
    load: Load, down_at: float, gone_at: float, up_at: float, back_at: float, items: int
) -> None:
    """Every request answered in time, 200 or a clear 503, never a 500; features before the
    outage, a flagged popularity fallback of every item during it, features after it."""
    records = load.records
    assert len(records) > 50
    statuses = {r[2] for r in records}
    assert statuses <= {200, 503}, [r for r in records if r[2] not in (200, 503)][:3]
    assert max(r[1] for r in records) < 2.0  # never a hung request
    before = load.within(0, down_at)
    assert before and all(has_features(r) for r in before)
    during = [r for r in load.within(gone_at, up_at) if r[2] == 200]
    assert during, "no request was answered while the store was down"
    assert all(r[3]["online_store_unavailable"] and r[3]["fallback"] for r in during)
    assert all(len(r[3]["items"]) == items for r in during)  # the items' popularity, from memory
    after = load.within(back_at, time.monotonic())
    assert after and all(has_features(r) for r in after)
