"""The bad-data matrix through the DAG's own ``ingest`` and ``validate`` tasks (real GE).

Seven good days are already in the lake; upstream then delivers today's partition
corrupted one way. Each corruption must be caught by the expectation that names
it, the task must fail with that name in its message (in Airflow, ``validate``
failing stops the chain, so nothing downstream runs), and the delivered file must
sit in quarantine byte for byte, with nothing of it left in the lake.
"""

from __future__ import annotations

import filecmp
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from time import sleep

import pandas as pd
import pytest

from pipelines import catalog, config, tasks
from pipelines.config import Settings

pytestmark = pytest.mark.integration

ROWS = 20


def day_partition(day: date, rows: int = ROWS) -> pd.DataFrame:
    """``rows`` distinct interactions, one second apart from the day's first second."""
    start = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())
    return pd.DataFrame(
        {
            "user_id": pd.Series([f"u{i % 5}" for i in range(rows)], dtype="string"),
            "item_id": pd.Series([f"i{i}" for i in range(rows)], dtype="string"),
            "rating": [0.5 + (i % 10) * 0.5 for i in range(rows)],
            "timestamp": [start + i for i in range(rows)],
        }
    )


def _set(column: str, value: object, rows: slice = slice(0, 3)) -> Callable:
    def corrupt(df: pd.DataFrame) -> pd.DataFrame:
        df.loc[df.index[rows], column] = value
        return df

    return corrupt


Failure = tuple[str, str | None, str | None]  # expectation, column(s), named check

CASES: dict[str, tuple[Callable[[pd.DataFrame], pd.DataFrame], Failure]] = {
    # name: (corruption, the failure it must produce)
    "null_user_ids": (
        _set("user_id", pd.NA),
        ("expect_column_values_to_not_be_null", "user_id", None),
    ),
    "rating_out_of_range": (
        _set("rating", 7.0),
        ("expect_column_values_to_be_between", "rating", None),
    ),
    "timestamp_from_another_day": (
        lambda df: df.assign(timestamp=df["timestamp"] - 86_400 * (df.index < 3)),
        ("expect_column_pair_values_to_be_equal", "event_date,partition_date", None),
    ),
    "future_timestamp": (
        # 23:59:58 today: inside the partition's day, but later than now.
        lambda df: df.assign(
            timestamp=df["timestamp"].mask(df.index == 0, df["timestamp"] + 86_398)
        ),
        ("expect_column_max_to_be_between", "timestamp", "no_future"),
    ),
    "duplicate_rows": (
        lambda df: pd.concat([df, df.iloc[:3]], ignore_index=True),
        ("expect_compound_columns_to_be_unique", "user_id,item_id,timestamp", None),
    ),
    "empty_file": (lambda df: df.iloc[:0], ("expect_table_row_count_to_be_between", None, None)),
    "renamed_column": (
        lambda df: df.rename(columns={"rating": "score"}),
        ("expect_table_columns_to_match_set", None, None),
    ),
    "volume_drop_to_10_percent": (
        lambda df: df.iloc[: ROWS // 10],
        ("expect_table_row_count_to_be_between", None, "volume_vs_trailing_mean"),
    ),
}


@pytest.fixture
def today() -> date:
    """The real clock's date, read when the test starts: the future-timestamp case writes
    23:59:58 of it, which must still be ahead of ``now`` when ``validate`` runs. A date read
    at collection can be yesterday by then in a long suite, so near midnight this waits."""
    now = datetime.now(UTC)
    to_midnight = (datetime.combine(now.date() + timedelta(days=1), time(), UTC) - now).seconds
    if to_midnight < 120:
        sleep(to_midnight + 1)
    return datetime.now(UTC).date()


@pytest.fixture
def lake(tmp_path, monkeypatch, today: date) -> Iterator[Settings]:
    """A lake holding the seven good days before today."""
    monkeypatch.setenv("CR_DATA_DIR", str(tmp_path))
    config.get_settings.cache_clear()
    settings = config.get_settings()
    for back in range(7, 0, -1):
        day = today - timedelta(days=back)
        for entry in (catalog.LANDING, catalog.LAKE):
            path = entry.path(settings, date=day)
            path.parent.mkdir(parents=True, exist_ok=True)
            day_partition(day).to_parquet(path, index=False)
    yield settings
    config.get_settings.cache_clear()


def _landed(settings: Settings, today: date) -> Path:
    path = catalog.LANDING.path(settings, date=today)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_a_good_day_passes(lake: Settings, today: date) -> None:
    day_partition(today).to_parquet(_landed(lake, today), index=False)
    assert tasks.ingest(today)["partitions"] == 1
    assert tasks.validate(today)["passed"] is True
    assert catalog.LAKE.exists(lake, date=today)
    assert not catalog.QUARANTINE.prefix(lake).exists()


@pytest.mark.parametrize("case", list(CASES))
def test_a_corrupted_day_is_quarantined_whole(lake: Settings, today: date, case: str) -> None:
    corrupt, expected = CASES[case]
    landed = _landed(lake, today)
    corrupt(day_partition(today)).to_parquet(landed, index=False)

    tasks.ingest(today)
    with pytest.raises(tasks.ValidationFailed) as failed:
        tasks.validate(today)

    assert expected[0] in str(failed.value)
    quarantined = catalog.QUARANTINE.path(lake, date=today)
    assert filecmp.cmp(quarantined, landed, shallow=False)
    result = catalog.QUARANTINE_VALIDATION.load(lake, date=today)
    assert result.passed is False
    assert expected in {
        (f["expectation"], f.get("column"), f.get("check"))
        for f in result.suites["raw_interactions"].failed_expectations
    }
    assert not catalog.LAKE.exists(lake, date=today)
    # The good days are untouched, and no later stage left anything for today.
    assert len(catalog.LAKE.dates(lake)) == 7
    written = (
        catalog.INGEST,
        catalog.RESOURCES,  # each stage's cost, like its time
        catalog.TIMINGS,
        catalog.VALIDATION,
    )
    assert sorted(catalog.run_dir(lake, today).iterdir()) == sorted(
        entry.path(lake, date=today) for entry in written
    )


@pytest.mark.parametrize("bad", [None, 1])
def test_a_large_delivery_is_validated_in_batches_of_whole_days(
    tmp_path, monkeypatch, today: date, bad: int | None
) -> None:
    """Three days land at once (a first run); with room for one day per batch, each day is
    its own GE batch. One bad day fails the run and names itself; the run's days are
    quarantined together, so a re-run ingests them all again."""
    monkeypatch.setenv("CR_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CR_VALIDATION_BATCH_ROWS", str(ROWS + 5))
    config.get_settings.cache_clear()
    settings = config.get_settings()
    days = [today - timedelta(days=back) for back in (3, 2, 1)]
    for i, day in enumerate(days):
        frame = day_partition(day)
        if i == bad:
            frame = CASES["rating_out_of_range"][0](frame)
        path = catalog.LANDING.path(settings, date=day)
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(path, index=False)
    try:
        assert tasks.ingest(days[-1])["partitions"] == 3
        if bad is None:
            assert tasks.validate(days[-1]) == {
                "passed": True,
                "rows": 3 * ROWS,
                "data_docs": catalog.VALIDATION.load(settings, date=days[-1]).data_docs,
            }
        else:
            with pytest.raises(tasks.ValidationFailed, match=f"in {days[bad]}..{days[bad]}"):
                tasks.validate(days[-1])
        result = catalog.VALIDATION.load(settings, date=days[-1])
        assert [(p.partitions, p.passed) for p in result.parts] == [
            ([d.isoformat(), d.isoformat()], i != bad) for i, d in enumerate(days)
        ]
        assert result.rows == 3 * ROWS
        suite = result.suites["raw_interactions"]
        # Each day ran the whole suite; only the bad day's rating check failed.
        assert suite.evaluated % 3 == 0 and suite.evaluated > 3
        assert suite.evaluated - suite.successful == (0 if bad is None else 1)
        assert [f["column"] for f in suite.failed_expectations] == (
            [] if bad is None else ["rating"]
        )
        lake = catalog.LAKE.dates(settings)
        quarantined = sorted(catalog.QUARANTINE.prefix(settings).glob("*"))
        folders = [catalog.QUARANTINE.path(settings, date=d).parent for d in days]
        assert (lake, quarantined) == ((days, []) if bad is None else ([], folders))
    finally:
        config.get_settings.cache_clear()
