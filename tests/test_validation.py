"""Raw partition validation with real Great Expectations (File context, Data Docs on disk)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import pytest

from pipelines import catalog, validation
from pipelines.config import Settings
from pipelines.contracts import ITEM_FEATURES, MODEL_FEATURES, USER_FEATURES
from pipelines.validation import (
    failure_message,
    quarantine_partition,
    validate_features,
    validate_interactions,
    validate_training_set,
    with_vectorized_dtypes,
)

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
    # 10 original expectations + "no timestamp after now", which is always on.
    assert suite["evaluated"] == suite["successful"] == 11
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


def test_event_dates_are_utc_days_and_null_where_the_timestamp_is_not_one(
    settings: Settings,
) -> None:
    """Each distinct day is formatted once; a null or unparseable timestamp gives a null
    day, which breaks the pair check (it is not the partition's day)."""
    df = good_partition(6).astype({"timestamp": object})
    df.loc[1, "timestamp"] = DAY_START + 86_399  # the day's last second
    df.loc[2, "timestamp"] = None
    df.loc[3, "timestamp"] = "noon"
    df.loc[4, "timestamp"] = DAY_START - 1  # the day before

    result = _validate(df, settings)

    failed = result["suites"]["raw_interactions"]["failed_expectations"]
    pair = next(f for f in failed if f["expectation"] == "expect_column_pair_values_to_be_equal")
    assert pair["unexpected_count"] == 3  # None, "noon" and the day before


def test_narrow_dtypes_are_widened_for_ge_with_the_same_values() -> None:
    frame = pd.DataFrame(
        {
            "f": pd.Series([0.1, None], dtype="float32"),
            "i": pd.Series([1, 2], dtype="int32"),
            "t": pd.Series(pd.to_datetime([0, 86_400], unit="s")).astype("datetime64[us]"),
            "tz": pd.to_datetime([0, 1], unit="s", utc=True),
            "s": ["a", None],
        }
    )
    out = with_vectorized_dtypes(frame)
    assert out.dtypes.astype(str).tolist() == [
        "float64", "int64", "datetime64[ns]", "datetime64[ns, UTC]", "object"
    ]  # fmt: skip
    pd.testing.assert_frame_equal(out, frame, check_dtype=False)
    assert out["f"].iloc[0] == frame["f"].iloc[0]  # exactly: float32 widens losslessly
    wide = out[["i", "s"]]
    assert with_vectorized_dtypes(wide) is wide  # nothing to cast, nothing copied


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
    source = catalog.LAKE.path(settings, date=DAY)
    source.parent.mkdir(parents=True)
    good_partition().to_parquet(source)
    payload = source.read_bytes()
    result = _validate(_null_users(pd.read_parquet(source)), settings)

    folder = quarantine_partition(source, DAY, result, settings)

    assert folder == catalog.QUARANTINE.path(settings, date=DAY).parent
    assert not source.exists()
    assert catalog.QUARANTINE.path(settings, date=DAY).read_bytes() == payload
    assert catalog.QUARANTINE_VALIDATION.load(
        settings, date=DAY
    ) == catalog.ValidationResult.model_validate(result)


def test_a_second_quarantine_of_a_date_keeps_the_first(settings: Settings) -> None:
    source = catalog.LAKE.path(settings, date=DAY)
    source.parent.mkdir(parents=True)
    part = catalog.QUARANTINE.path(settings, date=DAY)
    validation = catalog.QUARANTINE_VALIDATION.path(settings, date=DAY)
    for attempt, payload in enumerate((b"first", b"second", b"third"), start=1):
        source.write_bytes(payload)
        result = {"passed": False, "suites": {}, "rows": attempt}  # rows tell attempts apart
        folder = quarantine_partition(source, DAY, result, settings)
    assert part.read_bytes() == b"third"
    assert catalog.QUARANTINE_VALIDATION.load(settings, date=DAY).rows == 3
    for n, payload in ((1, b"first"), (2, b"second")):
        earlier = folder / f"earlier-{n}"
        assert (earlier / part.name).read_bytes() == payload
        kept = catalog.ValidationResult.model_validate_json(
            (earlier / validation.name).read_bytes()
        )
        assert kept.rows == n


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


# --- raw interactions: freshness, volume, unknown items, duplicate rate ----------------


def _raw_checks(result: dict) -> dict[str, dict]:
    failed = result["suites"]["raw_interactions"]["failed_expectations"]
    return {f["check"]: f for f in failed if "check" in f}


def test_future_timestamps_fail_against_a_pinned_now(settings: Settings) -> None:
    df = good_partition()  # hourly from 00:00 to 19:00
    now = DAY_START + 10 * 3600 + 30 * 60

    late = _validate_with(df, settings, now=now)
    on_time = _validate_with(df, settings, now=DAY_START + 19 * 3600)

    assert late["passed"] is False
    assert _failed_types(late) == {"expect_column_max_to_be_between"}
    future = _raw_checks(late)["no_future"]
    assert future["column"] == "timestamp" and future["observed_value"] == DAY_START + 19 * 3600
    assert on_time["passed"] is True
    assert "[no_future] on timestamp" in failure_message(late)


def _validate_with(df: pd.DataFrame, settings: Settings, **kwargs: object) -> dict:
    return validate_interactions(
        df, partition_dates=[DAY], settings=settings, run_name="checks", **kwargs
    )


def test_volume_drop_against_the_trailing_mean_fails(settings: Settings) -> None:
    trailing = [190, 200, 210, 200, 200, 195, 205]  # mean 200; the partition has 20 rows (10 %)

    dropped = _validate_with(good_partition(), settings, trailing_daily_rows=trailing)
    normal = _validate_with(good_partition(), settings, trailing_daily_rows=[20, 18, 22])
    spike = _validate_with(good_partition(), settings, trailing_daily_rows=[3, 4])

    assert dropped["passed"] is False
    assert _failed_types(dropped) == {"expect_table_row_count_to_be_between"}
    volume = _raw_checks(dropped)["volume_vs_trailing_mean"]
    assert volume["observed_value"] == 20
    assert normal["passed"] is True
    assert normal["suites"]["raw_interactions"]["evaluated"] == 12
    assert spike["passed"] is False and "volume_vs_trailing_mean" in _raw_checks(spike)
    # Same gx_dir, no trailing counts: the stored suite goes back to the default one.
    assert _validate(good_partition(), settings)["suites"]["raw_interactions"]["evaluated"] == 11


def test_volume_bounds_are_inclusive_and_per_day(settings: Settings) -> None:
    # 0.2 * 100 = 20.000000000000004 in floats: exactly 20 rows must still pass.
    assert _validate_with(good_partition(), settings, trailing_daily_rows=[100])["passed"]
    next_day = good_partition()
    next_day["timestamp"] += 86_400
    next_day["partition_date"] = "2025-01-03"
    both = pd.concat([good_partition(), next_day], ignore_index=True)
    days = [DAY, date(2025, 1, 3)]

    # 40 rows over 2 days = 20 a day: fine against a mean of 20, a drop against 200.
    ok = validate_interactions(
        both, partition_dates=days, settings=settings, run_name="v", trailing_daily_rows=[20]
    )
    low = validate_interactions(
        both, partition_dates=days, settings=settings, run_name="v", trailing_daily_rows=[200]
    )
    assert ok["passed"] is True and low["passed"] is False


def test_unknown_items_fail_above_the_tolerated_share(settings: Settings) -> None:
    df = good_partition()  # items i0..i19
    mostly_unknown = {f"i{i}" for i in range(8)}  # 12 of 20 rows unknown: 60 %
    half_known = {f"i{i}" for i in range(10)} | {"not-in-the-batch"}  # 50 %: tolerated

    bad = _validate_with(df, settings, known_item_ids=mostly_unknown)
    ok = _validate_with(df, settings, known_item_ids=half_known)

    assert bad["passed"] is False
    assert _failed_types(bad) == {"expect_column_values_to_be_in_set"}
    unknown = _raw_checks(bad)["unknown_item_share"]
    assert unknown["column"] == "item_known" and unknown["unexpected_count"] == 12
    assert ok["passed"] is True
    # An empty set means "no catalogue known yet": the check is off, as without the argument.
    assert _validate_with(df, settings, known_item_ids=set())["passed"] is True


def test_duplicate_rate_threshold_comes_from_settings(tmp_path: Path) -> None:
    df = pd.concat([good_partition(), good_partition().iloc[:1]], ignore_index=True)
    strict = Settings(data_dir=tmp_path / "strict")
    # GE counts both rows of a duplicated key: 2 of 21 rows, about 9.5 %.
    lenient = Settings(data_dir=tmp_path / "lenient")
    object.__setattr__(lenient, "max_duplicate_rate", 0.1)

    assert "expect_compound_columns_to_be_unique" in _failed_types(_validate_with(df, strict))
    assert _validate_with(df, lenient)["passed"] is True


# --- feature tables -------------------------------------------------------------------


def good_features(kind: str, keys: int = 6, days: int = 3) -> pd.DataFrame:
    """A small feature table shaped like the Spark output (int64 key, float32 features)."""
    key = f"{kind}_id"
    features = USER_FEATURES if kind == "user" else ITEM_FEATURES
    n = keys * days
    frame = pd.DataFrame(
        {
            key: pd.Series([k for k in range(keys) for _ in range(days)], dtype="int64"),
            "event_timestamp": pd.to_datetime(
                [(20_000 + d) * 86_400 for _ in range(keys) for d in range(days)],
                unit="s",
                utc=True,
            ),
        }
    )
    for name in features:
        if "rating" in name:
            values = [1.0 + (i % 8) * 0.5 for i in range(n)]
        elif "_aff_" in name or "_genre_" in name:
            values = [(i % 5) / 4 for i in range(n)]
        else:
            values = [float(i % 7) for i in range(n)]
        frame[name] = pd.Series(values, dtype="float32")
    return frame


def _feature_failures(result: dict, kind: str) -> set[tuple[str, str]]:
    failed = result["suites"][f"{kind}_features"]["failed_expectations"]
    return {(f["expectation"], f["column"]) for f in failed}


@pytest.mark.parametrize("kind", ["user", "item"])
def test_good_feature_table_passes(settings: Settings, kind: str) -> None:
    result = validate_features(good_features(kind), kind=kind, settings=settings, run_name="f")

    suite = result["suites"][f"{kind}_features"]
    assert result["passed"] is True, suite["failed_expectations"]
    assert suite["evaluated"] == suite["successful"] > 40
    assert result["rows"] == result["validated_rows"] == 18
    assert Path(result["data_docs_page"]).is_file()
    json.dumps(result)


def test_feature_table_fails_on_nulls_and_out_of_range(settings: Settings) -> None:
    frame = good_features("user")
    frame.loc[:2, "user_mean_rating"] = float("nan")  # 3 of 18 rows: 17 % > 5 %
    frame.loc[0, "user_aff_g03"] = 1.5
    frame.loc[1, "user_cnt_7d"] = -1.0
    frame.loc[2, "user_days_since_last"] = -2.0
    frame.loc[5, "user_id"] = None  # the key column turns float; still a null key

    result = validate_features(frame, kind="user", settings=settings, run_name="bad")

    assert result["passed"] is False
    assert _feature_failures(result, "user") >= {
        ("expect_column_values_to_not_be_null", "user_mean_rating"),
        ("expect_column_values_to_not_be_null", "user_id"),
        ("expect_column_values_to_be_between", "user_aff_g03"),
        ("expect_column_values_to_be_between", "user_cnt_7d"),
        ("expect_column_values_to_be_between", "user_days_since_last"),
    }
    assert "user_features: expect_column_values_to_not_be_null on user_mean_rating (3 of 18" in (
        failure_message(result)
    )


def test_item_feature_table_fails_on_duplicate_keys_and_ratings(settings: Settings) -> None:
    frame = good_features("item")
    frame.loc[3, "item_mean_rating"] = 6.0
    frame = pd.concat([frame, frame.iloc[:1]], ignore_index=True)

    result = validate_features(frame, kind="item", settings=settings, run_name="bad")

    assert _feature_failures(result, "item") == {
        ("expect_column_values_to_be_between", "item_mean_rating"),
        ("expect_compound_columns_to_be_unique", "item_id,event_timestamp"),
    }


def test_a_suite_keeps_only_its_newest_stored_results(tmp_path: Path) -> None:
    """GE rebuilds the Data Docs index from every stored result at each validation, so the
    oldest results of a suite and their pages go; another suite's are untouched."""
    settings = Settings(data_dir=tmp_path, validation_results_kept=2)
    users = good_features("user")
    pages = [
        validate_features(users, kind="user", settings=settings, run_name=f"day-{i}")[
            "data_docs_page"
        ]
        for i in range(4)
    ]
    items = validate_features(
        good_features("item"), kind="item", settings=settings, run_name="catalogue-check"
    )

    assert [Path(p).is_file() for p in pages] == [False, False, True, True]
    index = Path(items["data_docs"]).read_text()
    assert [f"day-{i}" in index for i in range(4)] == [False, False, True, True]
    assert Path(items["data_docs_page"]).is_file() and "catalogue-check" in index
    context = validation._context(settings)
    stored = [k.run_id.run_name for k in context.validation_results_store.list_keys()]
    assert sorted(stored) == ["catalogue-check", "day-2", "day-3"]


def test_empty_or_sampled_feature_table(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    empty = validate_features(
        good_features("item").iloc[:0], kind="item", settings=settings, run_name="empty"
    )
    assert empty["passed"] is False
    assert ("expect_column_unique_value_count_to_be_between", "item_id") in _feature_failures(
        empty, "item"
    )
    object.__setattr__(settings, "validation_sample_rows", 10)
    sampled = validate_features(
        good_features("item"), kind="item", settings=settings, run_name="sampled"
    )
    assert sampled["passed"] is True
    assert (sampled["rows"], sampled["validated_rows"]) == (18, 10)


# --- training set ---------------------------------------------------------------------


def good_training_set(queries: int = 4, candidates: int = 5) -> pd.DataFrame:
    """``queries`` queries of one positive (label 4) and ``candidates - 1`` negatives."""
    rows = []
    for q in range(queries):
        for c in range(candidates):
            rows.append(
                {
                    "query_id": q,
                    "user_id": q % 3,
                    "item_id": 100 + c,
                    "label": 4.0 if c == 0 else 0.0,
                    "day": 20_000 + q,
                    "event_timestamp": pd.Timestamp((20_000 + q) * 86_400, unit="s", tz="UTC"),
                }
            )
    frame = pd.DataFrame(rows).astype({"query_id": "int64", "user_id": "int64", "item_id": "int64"})
    for i, name in enumerate(MODEL_FEATURES):
        frame[name] = pd.Series([(i + r) % 3 / 2 for r in range(len(frame))], dtype="float32")
    frame.loc[:4, USER_FEATURES] = float("nan")  # one query past the TTL: legitimately missing
    return frame


def _training_failures(result: dict) -> dict[str, dict]:
    failed = result["suites"]["training_set"]["failed_expectations"]
    return {f.get("check") or f"{f['expectation']}:{f['column']}": f for f in failed}


def test_good_training_set_passes(settings: Settings) -> None:
    result = validate_training_set(good_training_set(), settings=settings, run_name="t")

    suite = result["suites"]["training_set"]
    assert result["passed"] is True, suite["failed_expectations"]
    assert suite["evaluated"] == suite["successful"] > len(MODEL_FEATURES)
    assert result["rows"] == 20
    json.dumps(result)


def test_training_set_fails_on_a_single_candidate_query(settings: Settings) -> None:
    frame = good_training_set()
    frame = frame[~((frame["query_id"] == 1) & (frame["label"] == 0))]  # query 1: its positive

    failed = _training_failures(validate_training_set(frame, settings=settings, run_name="t"))

    assert set(failed) == {"query_has_2_candidates"}
    assert failed["query_has_2_candidates"]["unexpected_count"] == 1


def test_training_set_fails_on_a_query_without_positive(settings: Settings) -> None:
    frame = good_training_set()
    frame.loc[frame["query_id"] == 2, "label"] = 0.0

    failed = _training_failures(validate_training_set(frame, settings=settings, run_name="t"))

    assert set(failed) == {"query_has_a_positive"}
    assert failed["query_has_a_positive"]["unexpected_count"] == 5


def test_training_set_fails_on_labels_nulls_and_positive_share(settings: Settings) -> None:
    frame = good_training_set()
    frame.loc[1, "label"] = 7.0
    frame.loc[:11, "item_pop_30d"] = float("nan")  # 12 of 20 rows: 60 % > 50 %

    failed = _training_failures(validate_training_set(frame, settings=settings, run_name="t"))
    assert set(failed) == {
        "expect_column_values_to_be_between:label",
        "expect_column_values_to_not_be_null:item_pop_30d",
    }

    all_positive = good_training_set().assign(label=3.0)
    failed = _training_failures(
        validate_training_set(all_positive, settings=settings, run_name="t")
    )
    assert set(failed) == {"positive_label_share"}
    assert failed["positive_label_share"]["observed_value"] == 1.0


def _new_users(frame: pd.DataFrame, share: float) -> pd.DataFrame:
    """``frame`` with the first ``share`` of its queries by users without history yet."""
    queries = sorted(frame["query_id"].unique())
    new = frame["query_id"].isin(queries[: round(share * len(queries))])
    frame.loc[new, [*USER_FEATURES, "genre_match"]] = float("nan")  # no feature row at all
    return frame


def test_training_set_passes_when_most_users_have_no_history_yet(settings: Settings) -> None:
    frame = _new_users(good_training_set(queries=10), 0.6)  # 30 of 50 rows: new users

    result = validate_training_set(frame, settings=settings, run_name="t")

    assert result["passed"] is True, result["suites"]["training_set"]["failed_expectations"]
    assert result["user_without_history_share"] == 0.6
    assert result["item_without_history_share"] == 0.0
    assert result["null_shares"]["user_cnt_all"] == 0.6
    assert result["null_shares"]["genre_match"] == 0.6
    assert result["null_shares"]["item_pop_30d"] == 0.0


@pytest.mark.parametrize(
    ("feature", "history"),
    [("user_mean_rating", "user_cnt_all"), ("item_mean_rating", "item_pop_all")],
)
def test_training_set_fails_on_a_null_feature_where_history_exists(
    settings: Settings, feature: str, history: str
) -> None:
    frame = _new_users(good_training_set(queries=10), 0.6)
    row = frame.index[frame["user_cnt_all"].notna()][0]  # a user (and item) with history
    frame.loc[row, feature] = float("nan")  # 1 of 50 rows: far below any overall share

    result = validate_training_set(frame, settings=settings, run_name="t")

    failed = _training_failures(result)
    assert set(failed) == {f"expect_column_values_to_not_be_null:{feature}"}
    assert failed[f"expect_column_values_to_not_be_null:{feature}"]["unexpected_count"] == 1
    assert f"on {feature} where {history}.notnull()" in failure_message(result)


def test_training_set_tolerates_missing_item_metadata_where_history_exists(
    settings: Settings,
) -> None:
    frame = good_training_set(queries=10)
    frame.loc[frame["item_id"] == 101, "item_age_years"] = float("nan")  # no release year

    assert validate_training_set(frame, settings=settings, run_name="t")["passed"] is True
