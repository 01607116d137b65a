"""Raw partition validation with real Great Expectations (File context, Data Docs on disk)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import pytest

from pipelines.config import Settings
from pipelines.validation import failure_message, quarantine_partition, validate_interactions

pytestmark = pytest.mark.integration

DAY = date(2025, 1, 2)
DAY_START = int(datetime(2025, 1, 2, tzinfo=UTC).timestamp())


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path)


def good_partition(rows: int = 20) -> pd.DataFrame:
    """``rows`` distinct interactions spread over 2025-01-02 (UTC)."""
    return pd.DataFrame(
        {
            "user_id": pd.Series([f"u{i % 5}" for i in range(rows)], dtype="string"),
            "item_id": pd.Series([f"i{i}" for i in range(rows)], dtype="string"),
            "rating": [0.5 + (i % 10) * 0.5 for i in range(rows)],
            "timestamp": [DAY_START + i * 3600 for i in range(rows)],
            "partition_date": DAY.isoformat(),
        }
    )


def _validate(df: pd.DataFrame, settings: Settings, run_name: str = "test") -> dict:
    return validate_interactions(df, partition_dates=[DAY], settings=settings, run_name=run_name)


def _failed_types(result: dict) -> set[str]:
    failed = result["suites"]["raw_interactions"]["failed_expectations"]
    return {f["expectation"] for f in failed}


def test_good_partition_passes_and_builds_data_docs(settings: Settings) -> None:
    result = _validate(good_partition(), settings)

    assert result["passed"] is True
    suite = result["suites"]["raw_interactions"]
    assert suite["success"] and suite["failed_expectations"] == []
    assert suite["evaluated"] == suite["successful"] == 10
    assert result["rows"] == 20 and result["partitions"] == ["2025-01-02"]
    index = Path(result["data_docs"])
    assert index.is_absolute() and index.is_file()
    assert "raw_interactions" in index.read_text()
    json.dumps(result)


def _null_users(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[:2, "user_id"] = pd.NA
    return df


def _rating_seven(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[4, "rating"] = 7.0
    return df


def _other_day(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[5, "timestamp"] = DAY_START - 3600
    return df


def _duplicates(df: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([df, df.iloc[:3]], ignore_index=True)


def _empty(df: pd.DataFrame) -> pd.DataFrame:
    return df.iloc[:0]


def _renamed(df: pd.DataFrame) -> pd.DataFrame:
    return df.rename(columns={"rating": "score"})


@pytest.mark.parametrize(
    ("corrupt", "expected"),
    [
        (_null_users, "expect_column_values_to_not_be_null"),
        (_rating_seven, "expect_column_values_to_be_between"),
        (_other_day, "expect_column_pair_values_to_be_equal"),
        (_duplicates, "expect_compound_columns_to_be_unique"),
        (_empty, "expect_table_row_count_to_be_between"),
        (_renamed, "expect_table_columns_to_match_set"),
    ],
    ids=["null_user", "rating_7", "other_day", "duplicates", "empty", "renamed"],
)
def test_corrupted_partition_fails(
    settings: Settings, corrupt: Callable[[pd.DataFrame], pd.DataFrame], expected: str
) -> None:
    result = _validate(corrupt(good_partition()), settings)

    assert result["passed"] is False
    assert result["suites"]["raw_interactions"]["success"] is False
    assert expected in _failed_types(result)
    json.dumps(result)


def test_other_day_also_breaks_timestamp_window(settings: Settings) -> None:
    failed = _validate(_other_day(good_partition()), settings)["suites"]["raw_interactions"]
    window = [
        f
        for f in failed["failed_expectations"]
        if f["expectation"] == "expect_column_values_to_be_between" and f["column"] == "timestamp"
    ]
    assert window and window[0]["unexpected_count"] == 1


def test_failure_message_names_every_failed_expectation(settings: Settings) -> None:
    result = _validate(_rating_seven(_null_users(good_partition())), settings)

    assert result["passed"] is False
    failed = {
        (f["expectation"], f["column"]): f
        for f in result["suites"]["raw_interactions"]["failed_expectations"]
    }
    assert failed["expect_column_values_to_not_be_null", "user_id"]["unexpected_count"] == 3
    assert failed["expect_column_values_to_be_between", "rating"]["unexpected_count"] == 1
    message = failure_message(result)
    assert "expect_column_values_to_not_be_null on user_id (3 of 20 rows)" in message
    assert "expect_column_values_to_be_between on rating (1 of 20 rows)" in message
    assert "\n" not in message


def test_quarantine_moves_the_partition(settings: Settings) -> None:
    source = settings.raw_dir / f"date={DAY.isoformat()}" / "part.parquet"
    source.parent.mkdir(parents=True)
    good_partition().to_parquet(source)
    payload = source.read_bytes()
    result = _validate(_null_users(pd.read_parquet(source)), settings)

    folder = quarantine_partition(source, DAY, result, settings)

    assert folder == settings.quarantine_dir / "date=2025-01-02"
    assert not source.exists()
    assert (folder / "part.parquet").read_bytes() == payload
    assert json.loads((folder / "validation.json").read_text()) == result


def test_quarantine_overwrites_an_earlier_one(settings: Settings) -> None:
    source = settings.raw_dir / f"date={DAY.isoformat()}" / "part.parquet"
    source.parent.mkdir(parents=True)
    for attempt in (b"first", b"second"):
        source.write_bytes(attempt)
        folder = quarantine_partition(source, DAY, {"passed": False, "attempt": 1}, settings)
    assert (folder / "part.parquet").read_bytes() == b"second"


def test_validating_twice_in_the_same_gx_dir(settings: Settings) -> None:
    first = _validate(good_partition(), settings, run_name="first")
    second = _validate(_null_users(good_partition()), settings, run_name="second")
    third = _validate(good_partition(), settings, run_name="third")

    assert (first["passed"], second["passed"], third["passed"]) == (True, False, True)
    assert first["data_docs"] == third["data_docs"]
    runs = list((settings.gx_dir / "uncommitted" / "validations").rglob("*.json"))
    assert len(runs) == 3


def test_two_partitions_validate_as_one_batch(settings: Settings) -> None:
    next_day = good_partition()
    next_day["timestamp"] += 86_400
    next_day["partition_date"] = "2025-01-03"
    both = pd.concat([good_partition(), next_day], ignore_index=True)

    result = validate_interactions(
        both, partition_dates=[date(2025, 1, 3), DAY], settings=settings, run_name="two"
    )

    assert result["passed"] is True
    assert result["rows"] == 40 and result["partitions"] == ["2025-01-02", "2025-01-03"]
    swapped = both.assign(partition_date=both["partition_date"].iloc[::-1].to_numpy())
    result = validate_interactions(
        swapped, partition_dates=[DAY, date(2025, 1, 3)], settings=settings, run_name="swap"
    )
    assert _failed_types(result) == {"expect_column_pair_values_to_be_equal"}


def test_renamed_column_message_is_readable(settings: Settings) -> None:
    message = failure_message(_validate(_renamed(good_partition()), settings))
    assert "expect_table_columns_to_match_set" in message
    assert 'column "rating"' in message and "Traceback" not in message
