"""A task killed in the middle of its writes recovers when it is run again, as Airflow's
retry runs it.

``materialize`` is SIGKILLed between two of Feast's online write batches, after one
feature view reached the SQLite online store and before the other did. The second
run must leave the online store exactly as an uninterrupted run does, and the
watermark must not move past what was fully loaded. (A kill inside training, and
Airflow's own retry of it, is covered by test_backfill.py.) And a backfill of an
earlier date, run after a later one, must not roll the online store back.
"""

from __future__ import annotations

import signal
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import worlds

from pipelines import catalog, contracts
from pipelines.config import PROJECT_ROOT, Settings

pytestmark = pytest.mark.integration

YESTERDAY, TODAY = date(2024, 3, 4), date(2024, 3, 5)
RUN_TASK = str(PROJECT_ROOT / "tests" / "run_task.py")


def _snapshots(key: str, features: list[str], n: int, seed: int) -> pd.DataFrame:
    """``n`` entities with a fresh snapshot at each midnight from 3 days before TODAY to TODAY+1."""
    rng = np.random.default_rng(seed)
    days = [datetime(2024, 3, d, tzinfo=UTC) for d in range(2, 7)]
    frame = pd.DataFrame(
        [(e, ts) for ts in days for e in range(1, n + 1)], columns=[key, "event_timestamp"]
    )
    values = rng.random((len(frame), len(features)), dtype=np.float32)
    return pd.concat([frame, pd.DataFrame(values, columns=features)], axis=1)


def _world(root: Path) -> tuple[Settings, dict[str, str]]:
    settings = Settings(data_dir=root)
    for kind, frame in (
        ("user", _snapshots("user_id", contracts.USER_FEATURES, 150, 1)),
        ("item", _snapshots("item_id", contracts.ITEM_FEATURES, 400, 2)),
    ):
        table = catalog.FEATURE_TABLE.path(settings, kind=kind)
        table.mkdir(parents=True)
        frame.to_parquet(table / "part-0.parquet", index=False, coerce_timestamps="us")
    # materialize loads from the data set's first day
    catalog.DATASET_FACTS.save(
        settings,
        catalog.DatasetFacts(
            name="hand-made snapshots",
            rows=0,
            users=150,
            items=400,
            first_date=date(2024, 3, 1),
            last_date=TODAY,
            partitions=0,
            genres=[],
            rating_min=1.0,
            rating_max=5.0,
        ),
    )
    return settings, worlds.project_env(root)


def _task(env: dict[str, str], name: str, day: date, *extra: str):
    return worlds.run([sys.executable, RUN_TASK, name, day.isoformat(), *extra], env, check=False)


def _watermarks(settings: Settings) -> dict[str, datetime]:
    return catalog.WATERMARKS.load(settings).root


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> tuple[Settings, dict[str, str], list[tuple]]:
    """Yesterday and today materialized without interruption: the reference."""
    settings, env = _world(tmp_path_factory.mktemp("clean"))
    for day in (YESTERDAY, TODAY):
        done = _task(env, "materialize", day)
        assert done.returncode == 0, done.stderr[-3000:]
    return settings, env, worlds.online_rows(settings)


def test_materialize_killed_mid_write_recovers_on_retry(clean, tmp_path):
    reference_settings, _, reference = clean
    settings, env = _world(tmp_path)
    assert _task(env, "materialize", YESTERDAY).returncode == 0
    loaded_yesterday = worlds.online_rows(settings)
    marks_yesterday = _watermarks(settings)

    crashed = _task(env, "materialize", TODAY, "--kill-at-online-write", "2")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
    partial = worlds.online_rows(settings)
    # One view's new rows landed, the other's did not: the store is half-updated ...
    assert partial != loaded_yesterday and partial != reference
    # ... and the watermark did not move, so the retry reloads today's window whole.
    assert _watermarks(settings) == marks_yesterday
    assert not catalog.MATERIALIZE.exists(settings, date=TODAY)

    retried = _task(env, "materialize", TODAY)
    assert retried.returncode == 0, retried.stderr[-3000:]
    assert worlds.online_rows(settings) == reference
    assert _watermarks(settings) == _watermarks(reference_settings)
    end = _watermarks(settings)[contracts.ITEM_VIEW]
    assert end.date() == TODAY + timedelta(days=1)


def test_materializing_an_earlier_date_never_rolls_the_online_store_back(clean):
    """A backfill of yesterday, run after today, must leave today's online rows."""
    settings, env, reference = clean
    marks = _watermarks(settings)

    done = _task(env, "materialize", YESTERDAY)

    assert done.returncode == 0, done.stderr[-3000:]
    assert worlds.online_rows(settings) == reference
    assert _watermarks(settings) == marks
    window = catalog.MATERIALIZE.load(settings, date=YESTERDAY).window
    assert window.skipped == "online store is newer" and window.start is None
