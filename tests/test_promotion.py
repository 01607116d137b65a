"""Champion/challenger: per-query significance and slice regressions decide promotion."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines import contracts
from pipelines.evaluation import query_slices
from pipelines.promotion import freshness_check, gate, paired_bootstrap, slice_report


def _metrics(model: float, production: float | None, popularity: float = 0.2) -> dict:
    m = lambda v: {"ndcg@10": v, "map@10": v, "recall@10": v, "queries": 400}  # noqa: E731
    return {
        "model": m(model),
        "popularity": m(popularity),
        "production": m(production) if production is not None else None,
    }


@pytest.fixture
def champion() -> np.ndarray:
    return np.random.default_rng(1).uniform(0.2, 0.8, size=400)


def test_slightly_worse_but_not_significantly_worse_is_promoted(champion):
    rng = np.random.default_rng(2)
    # Mean drop 0.003 under per-query noise of sd 0.1: the bound straddles 0.
    challenger = champion - 0.003 + rng.normal(0, 0.1, champion.size)
    sig = paired_bootstrap(challenger, champion, seed=0)
    assert sig["mean_diff"] < 0 < sig["upper_95"]
    assert sig["significantly_worse"] is False
    decision = gate(_metrics(champion.mean() - 0.003, champion.mean()), 0.005, significance=sig)
    assert decision["passed"] is True


def test_much_worse_is_blocked_by_the_paired_test(champion):
    rng = np.random.default_rng(3)
    challenger = champion - 0.05 + rng.normal(0, 0.02, champion.size)
    sig = paired_bootstrap(challenger, champion, seed=0)
    assert sig["upper_95"] < 0 and sig["significantly_worse"] is True
    assert sig["wilcoxon_p_less"] < 0.001
    # Even with a loose mean tolerance, significance alone blocks it.
    decision = gate(_metrics(champion.mean() - 0.05, champion.mean()), 0.1, significance=sig)
    assert decision["passed"] is False
    assert "significantly worse" in decision["reason"]


def test_a_slice_regression_is_reported_and_blocks():
    per_query = pd.DataFrame(
        {"model": [0.9] * 30 + [0.2] * 30, "production": [0.8] * 30 + [0.5] * 30},
        index=pd.RangeIndex(60, name="query_id"),
    )
    slices = pd.DataFrame(
        {"heavy": [True] * 30 + [False] * 30, "cold": [False] * 30 + [True] * 30},
        index=per_query.index,
    )
    report = slice_report(per_query, slices, "production", max_drop=0.05, min_queries=20)
    by = {r["slice"]: r for r in report}
    assert by["heavy"] == {
        "slice": "heavy",
        "queries": 30,
        "model": 0.9,
        "production": 0.8,
        "regression": False,
    }
    assert by["cold"]["regression"] is True  # 0.5 -> 0.2
    decision = gate(_metrics(0.55, 0.65), 0.5, slices=report)
    assert decision["passed"] is False and "slice cold" in decision["reason"]
    # A small slice is reported but does not gate.
    small = slice_report(per_query, slices, "production", max_drop=0.05, min_queries=31)
    assert not any(r["regression"] for r in small)


def test_query_slices_from_the_users_features_that_day():
    rows = []
    for qid, (past, top) in enumerate([(5, 0), (500, 1), (50, 1), (float("nan"), -1)]):
        aff = [0.0] * len(contracts.GENRE_SLOTS)
        if top >= 0:
            aff[top] = 1.0
        for _ in range(2):  # two candidates per query, same user features
            rows.append(
                {
                    "query_id": qid,
                    "user_cnt_all": past,
                    **dict(zip(contracts.USER_AFFINITY, aff, strict=True)),
                }
            )
    slices = query_slices(
        pd.DataFrame(rows), cold_max=20, heavy_min=300, genres=["Drama", "Comedy"]
    )
    assert slices["cold"].tolist() == [True, False, False, True]  # no history counts as cold
    assert slices["heavy"].tolist() == [False, True, False, False]
    assert slices["genre:Drama"].tolist() == [True, False, False, False]
    assert slices["genre:Comedy"].tolist() == [False, True, True, False]


def test_psi_is_zero_for_the_same_distribution_and_large_for_a_shift():
    from pipelines.monitoring import psi

    rng = np.random.default_rng(0)
    base = rng.normal(0, 1, 5000)
    assert psi(base, rng.normal(0, 1, 5000)) < 0.02
    assert psi(base, rng.normal(1.5, 1, 5000)) > 1.0
    # Values turning missing is drift too (NaN has its own bin).
    assert psi(base, np.full(5000, np.nan)) > 1.0


def test_skew_report_and_checks_name_the_skewed_feature():
    from pipelines.monitoring import monitoring_checks, skew_report

    offline = pd.DataFrame({"a": [1.0, 2.0, np.nan, 4.0], "b": [0.5, 0.5, 0.5, 0.5]})
    served = offline.assign(b=[0.5, 0.7, 0.5, 0.5])  # one of four rows differs
    report = skew_report(served, offline, ["a", "b"])
    assert report == {"rows": 4, "mismatch_rate": {"a": 0.0, "b": 0.25}}
    checks = monitoring_checks(report, {"a": 0.1, "b": 2.0}, max_mismatch=0.01, max_psi=1.0)
    assert [c["passed"] for c in checks] == [False, False]
    assert "b: 25.00%" in checks[0]["detail"] and "b: PSI 2.000" in checks[1]["detail"]
    decision = gate(_metrics(0.5, None), 0.005, extra_checks=checks)
    assert decision["passed"] is False and "skew" in decision["reason"]


def test_a_backfilled_earlier_date_never_replaces_a_newer_production_model():
    better = _metrics(0.6, 0.4)
    older = gate(better, 0.005, extra_checks=freshness_check("2003-02-20", "2003-02-28"))
    assert older["passed"] is False
    assert "at least as new as production" in older["reason"] and "2003-02-28" in older["reason"]
    for same_or_newer in ("2003-02-28", "2003-03-01"):
        checks = freshness_check(same_or_newer, "2003-02-28")
        assert gate(better, 0.005, extra_checks=checks)["passed"] is True
    assert freshness_check("2003-02-20", None) == []  # no champion yet


def _monitored_rows(rng: np.random.Generator, users: int, days: range) -> pd.DataFrame:
    """Training-set-like rows: a query per user and day, 3 candidates, the user's features
    repeated on every candidate and an item's on every row of its day."""
    from pipelines import contracts

    rows = []
    for day in days:
        item_rows = {i: rng.normal(day / 50, 1, len(contracts.ITEM_FEATURES)) for i in range(8)}
        for user in rng.choice(users, size=users // 2, replace=False):
            values = rng.normal(day / 50, 1, len(contracts.USER_FEATURES))
            for item in rng.choice(8, size=3, replace=False):
                rows.append([day, int(user), int(item), *values, *item_rows[item]])
    columns = ["day", "user_id", "item_id", *contracts.USER_FEATURES, *contracts.ITEM_FEATURES]
    frame = pd.DataFrame(rows, columns=columns)
    # Missing for some users on some days: on every row of the day, as the join gives it
    missing = frame[["user_id", "day"]].drop_duplicates().sample(frac=0.1, random_state=0)
    gone = frame.set_index(["user_id", "day"]).index.isin(
        missing.set_index(["user_id", "day"]).index
    )
    frame.loc[gone, "user_cnt_all"] = np.nan
    return frame


def test_drift_in_spark_equals_the_pandas_computation_and_its_sample_is_bounded(spark):
    """Monitor's drift: one row per user (latest day) and per item-day, de-duplicated in
    Spark, gives the PSI of the same de-duplication in pandas; past ``max_rows`` the driver
    gets a sample of about that many rows, the same however Spark partitions the data."""
    from pipelines import contracts
    from pipelines.monitoring import bounded_sample, drift_inputs, drift_report

    rng = np.random.default_rng(3)
    train, holdout = _monitored_rows(rng, 40, range(0, 30)), _monitored_rows(rng, 40, range(30, 45))
    drift, users = drift_inputs(
        spark.createDataFrame(train), spark.createDataFrame(holdout), 10, 10_000, 7
    )
    latest = holdout[holdout["day"] > holdout["day"].max() - 10]
    expected: dict[str, float] = {}
    for key, features in (
        ("user_id", contracts.USER_FEATURES),
        (["item_id", "day"], contracts.ITEM_FEATURES),
    ):
        expected |= drift_report(
            train.sort_values("day").drop_duplicates(key, keep="last"),
            latest.sort_values("day").drop_duplicates(key, keep="last"),
            features,
        )
    assert drift == expected
    assert users == {"train_users": train["user_id"].nunique(), "latest_users": 40}
    assert max(drift.values()) > 0.1  # the features moved with the day: a PSI that can fail
    # Sampled down to ~10 rows a side: the users are still counted before the sample
    sampled, sampled_users = drift_inputs(
        spark.createDataFrame(train), spark.createDataFrame(holdout), 10, 10, 7
    )
    assert sampled_users == users and sampled.keys() == drift.keys() and sampled != drift

    frame = spark.range(2000).withColumnRenamed("id", "user_id")
    taken = [
        bounded_sample(frame.repartition(n), ["user_id"], 2000, 200, 7)["user_id"] for n in (1, 7)
    ]
    assert 120 <= len(taken[0]) <= 280
    assert sorted(taken[0]) == sorted(taken[1])
    assert len(bounded_sample(frame, ["user_id"], 2000, 5000, 7)) == 2000
