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
