"""Fast unit tests of the pure functions in pipelines/ (no Spark), with hand-computed values."""

from __future__ import annotations

import math
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines import catalog, contracts, ids
from pipelines.evaluation import per_query_metrics, query_metrics, rank_order, summarise
from pipelines.features import day_number
from pipelines.ingest import days_to_ingest
from pipelines.promotion import gate
from pipelines.scoring import to_matrix
from pipelines.training_set import day_bounds

LOG2_3 = math.log2(3)  # discount of rank 2 is 1/log2(3); rank 1 is 1/log2(2) = 1

# --------------------------------------------------------------------------- metrics


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        # Perfect ranking: every metric is 1.
        ([2.0, 1.0, 0.0], {"ndcg@10": 1.0, "map@10": 1.0, "recall@10": 1.0}),
        # Ranked labels 0, 3, 1, 0: DCG = (2^3-1)/log2(3) + (2^1-1)/log2(4) = 7/log2(3) + 1/2,
        # IDCG = 7/1 + 1/log2(3). Relevant at ranks 2 and 3: AP = (1/2 + 2/3) / 2 = 7/12.
        (
            [0.0, 3.0, 1.0, 0.0],
            {
                "ndcg@10": (7 / LOG2_3 + 0.5) / (7 + 1 / LOG2_3),
                "map@10": 7 / 12,
                "recall@10": 1.0,
            },
        ),
        # No relevant item: everything is 0 (not NaN).
        ([0.0, 0.0, 0.0], {"ndcg@10": 0.0, "map@10": 0.0, "recall@10": 0.0}),
        # 12 candidates; label 1 at rank 1, label 2 at rank 11 (outside the top 10).
        # DCG = 1, IDCG = 3 + 1/log2(3); AP = (P@1 = 1) / min(2, 10) = 1/2; recall = 1/2.
        (
            [1.0] + [0.0] * 9 + [2.0, 0.0],
            {"ndcg@10": 1 / (3 + 1 / LOG2_3), "map@10": 0.5, "recall@10": 0.5},
        ),
    ],
    ids=["perfect", "graded", "no-relevant", "beyond-k"],
)
def test_query_metrics_hand_worked(labels: list[float], expected: dict[str, float]) -> None:
    arr = np.array(labels)
    got = query_metrics(arr, np.arange(arr.size))  # rank the candidates in frame order
    assert got == pytest.approx(expected)


def test_query_metrics_uses_the_order() -> None:
    # Same labels [0, 3, 1, 0], ranked 1, 2, 0, 3 -> labels 3, 1, 0, 0: the ideal order.
    got = query_metrics(np.array([0.0, 3.0, 1.0, 0.0]), np.array([1, 2, 0, 3]))
    assert got == pytest.approx({"ndcg@10": 1.0, "map@10": 1.0, "recall@10": 1.0})


@pytest.mark.parametrize(
    ("scores", "expected"),
    [
        ([0.1, 0.9, 0.5], [1, 2, 0]),
        ([np.nan, 0.2, 0.3], [2, 1, 0]),  # NaN scores rank last
        ([-np.inf, np.nan, 1.0], [2, 0, 1]),  # NaN below even -inf
    ],
)
def test_rank_order_descending(scores: list[float], expected: list[int]) -> None:
    order = rank_order(np.array(scores), np.random.default_rng(0))
    assert order.tolist() == expected


def test_rank_order_breaks_ties_at_random() -> None:
    # All scores equal, the positive first in the frame: with random tie-breaking it
    # comes first with probability 1/5, i.e. about 80 times out of 400 seeds.
    labels = np.array([1.0, 0.0, 0.0, 0.0, 0.0])
    scores = np.zeros(5)
    firsts = [rank_order(scores, np.random.default_rng(s))[0] for s in range(400)]
    first_is_positive = sum(f == 0 for f in firsts)
    assert 40 < first_is_positive < 130
    assert set(firsts) == {0, 1, 2, 3, 4}
    # So the metric of a constant scorer is not the perfect one.
    ndcgs = [
        query_metrics(labels, rank_order(scores, np.random.default_rng(s)))["ndcg@10"]
        for s in range(50)
    ]
    assert min(ndcgs) < 1.0


def test_rank_order_ties_only_among_equals() -> None:
    # Scores 1, 2, 2: indices 1 and 2 share the top two places, index 0 is always last.
    seen = set()
    for s in range(50):
        order = rank_order(np.array([1.0, 2.0, 2.0]), np.random.default_rng(s)).tolist()
        assert order[2] == 0
        seen.add(tuple(order[:2]))
    assert seen == {(1, 2), (2, 1)}


def test_per_query_metrics_and_summarise() -> None:
    frame = pd.DataFrame(
        {
            "query_id": [7, 7, 3, 3],
            "label": [0.0, 1.0, 1.0, 0.0],
            "score": [0.9, 0.1, 0.9, 0.1],
        }
    )
    per_query = per_query_metrics(frame, "score", seed=0)
    # Query 3: labels ranked 1, 0 -> perfect. Query 7: ranked 0, 1 -> DCG = 1/log2(3),
    # IDCG = 1, AP = (P@2 = 1/2) / 1 = 1/2, recall = 1.
    assert per_query["query_id"].tolist() == [3, 7]
    assert per_query["ndcg@10"].tolist() == pytest.approx([1.0, 1 / LOG2_3])
    assert per_query["map@10"].tolist() == pytest.approx([1.0, 0.5])
    assert per_query["recall@10"].tolist() == pytest.approx([1.0, 1.0])
    # Means: ndcg (1 + 0.63093) / 2 = 0.81546 -> 0.8155; map (1 + 0.5) / 2 = 0.75.
    assert summarise(per_query) == {
        "ndcg@10": 0.8155,
        "map@10": 0.75,
        "recall@10": 1.0,
        "queries": 2,
    }


# ------------------------------------------------------------------------------ gate


def _m(ndcg: float) -> dict[str, float]:
    return {"ndcg@10": ndcg}


@pytest.mark.parametrize(
    ("model", "popularity", "production", "passed", "reason_has"),
    [
        (0.30, 0.20, None, True, None),  # beats popularity, nothing in production
        (0.15, 0.20, None, False, "popularity"),  # loses to popularity
        (0.20, 0.20, None, False, "popularity"),  # a tie is not a win
        (0.30, 0.20, 0.32, False, "production"),  # 0.30 < 0.32 - 0.005 = 0.315
        (0.30, 0.20, 0.303, True, None),  # 0.30 >= 0.303 - 0.005 = 0.298
        (0.35, 0.20, 0.30, True, None),  # better than production
        (0.15, 0.20, 0.40, False, "production"),  # fails both checks, both are named
    ],
)
def test_gate(
    model: float,
    popularity: float,
    production: float | None,
    passed: bool,
    reason_has: str | None,
) -> None:
    metrics = {
        "model": _m(model),
        "popularity": _m(popularity),
        "production": None if production is None else _m(production),
    }
    result = gate(metrics, tolerance=0.005)
    assert result["passed"] is passed
    assert len(result["checks"]) == (1 if production is None else 2)
    if passed:
        assert "failed" not in result["reason"]
    else:
        assert result["reason"].startswith("failed")
        assert reason_has in result["reason"]
    if model < popularity and production is not None:
        assert "popularity" in result["reason"]


def test_gate_without_production_key() -> None:
    result = gate({"model": _m(0.3), "popularity": _m(0.1)}, tolerance=0.0)
    assert result["passed"] is True
    assert "popularity" in result["reason"]


# ------------------------------------------------------------------------------- ids


def _mapping(pairs: dict[str, int]) -> pd.DataFrame:
    return pd.DataFrame({"external_id": list(pairs), "internal_id": list(pairs.values())}).astype(
        {"external_id": "string", "internal_id": "int64"}
    )


def test_extend_mapping_is_stable() -> None:
    existing = _mapping({"b": 1, "a": 2})
    out = ids.extend_mapping(existing, pd.Series(["d", "a", "c", None, "c"]))
    # a and b keep 2 and 1; the unseen c, d are sorted and appended from max + 1 = 3.
    assert dict(zip(out["external_id"], out["internal_id"], strict=True)) == {
        "b": 1,
        "a": 2,
        "c": 3,
        "d": 4,
    }
    assert out["external_id"].tolist() == ["b", "a", "c", "d"]
    assert str(out["internal_id"].dtype) == "int64"


def test_extend_mapping_from_empty_and_idempotent() -> None:
    first = ids.extend_mapping(
        ids.read_mapping(Path("/nonexistent/x.parquet")), pd.Series(["y", "x"])
    )
    assert first["external_id"].tolist() == ["x", "y"]
    assert first["internal_id"].tolist() == [1, 2]
    again = ids.extend_mapping(first, pd.Series(["x", "y"]))
    pd.testing.assert_frame_equal(again, first)


def test_to_internal_unknown_is_na() -> None:
    mapping = _mapping({"a": 2, "c": 3})
    out = ids.to_internal(pd.Series(["a", "zz", "c"]), mapping)
    assert str(out.dtype) == "Int64"
    assert out.iloc[0] == 2
    assert out.iloc[1] is pd.NA
    assert out.iloc[2] == 3


def test_update_mapping_round_trip(tmp_path: Path) -> None:
    path = catalog.USER_IDS.path(tmp_path)
    ids.update_mapping(path, pd.Series(["u2", "u1"]))
    second = ids.update_mapping(path, pd.Series(["u3", "u1"]))
    # u1 = 1, u2 = 2 from the first call (sorted); u3 appended as 3.
    expected = {"u1": 1, "u2": 2, "u3": 3}
    assert dict(zip(second["external_id"], second["internal_id"], strict=True)) == expected
    pd.testing.assert_frame_equal(ids.read_mapping(path), second, check_dtype=False)
    assert ids.load_id_map(path) == expected
    assert list(path.parent.iterdir()) == [path]  # no temporary file left


# ---------------------------------------------------------------------------- ingest

LANDED = [date(2025, 1, d) for d in range(1, 6)]


@pytest.mark.parametrize(
    ("logical", "in_lake", "backfill_from", "expected"),
    [
        (date(2025, 1, 3), LANDED[:2], None, [date(2025, 1, 3)]),  # normal day
        (date(2025, 1, 3), [], None, LANDED[:3]),  # bootstrap: all history up to the date
        (date(2025, 1, 4), LANDED, date(2025, 1, 2), LANDED[1:4]),  # backfill window
        (date(2025, 1, 4), [], date(2025, 1, 2), LANDED[1:4]),  # backfill wins over bootstrap
        (date(2025, 1, 9), LANDED, None, []),  # nothing landed for the date
    ],
    ids=["normal", "bootstrap", "backfill", "backfill-empty-lake", "not-landed"],
)
def test_days_to_ingest(
    logical: date, in_lake: list[date], backfill_from: date | None, expected: list[date]
) -> None:
    assert days_to_ingest(logical, LANDED, in_lake, backfill_from) == expected


# --------------------------------------------------------------------- negatives


# ----------------------------------------------------------------- days and contracts


@pytest.mark.parametrize(
    ("day", "number"),
    [
        (date(1970, 1, 1), 0),
        (date(1970, 2, 1), 31),
        (date(2000, 1, 1), 10_957),  # 30 * 365 + 7 leap days (1972 .. 1996)
        (date(2024, 10, 4), 20_000),
    ],
)
def test_day_number(day: date, number: int) -> None:
    assert day_number(day) == number


def test_day_bounds() -> None:
    # 1970-02-01 is day 31: holdout (26, 31] is 5 days, train [17, 26] is 10 days.
    assert day_bounds(date(1970, 2, 1), holdout_days=5, train_days=10) == {
        "train_start": 17,
        "train_end": 26,
        "holdout_end": 31,
    }


def test_genre_match_dot_product() -> None:
    frame = pd.DataFrame(0.0, index=[10, 20, 30], columns=contracts.MODEL_FEATURES)
    frame.loc[10, ["user_aff_g00", "user_aff_g01", "user_aff_g02"]] = [0.5, 0.25, 0.25]
    frame.loc[10, ["item_genre_g00", "item_genre_g02"]] = 1.0
    frame.loc[20, "user_aff_g03"] = 1.0
    frame.loc[20, "item_genre_g00"] = 1.0
    frame.loc[30, "user_aff_g05"] = np.nan  # a missing user: NaN, not 0
    out = contracts.genre_match(frame)
    # Row 10: 0.5 * 1 + 0.25 * 0 + 0.25 * 1 = 0.75. Row 20: no overlap -> 0.
    assert out.index.tolist() == [10, 20, 30]
    assert out["genre_match"].iloc[:2].tolist() == pytest.approx([0.75, 0.0])
    assert np.isnan(out["genre_match"].iloc[2])


def test_model_features_contract() -> None:
    feats = contracts.MODEL_FEATURES
    assert len(feats) == len(set(feats))
    assert feats == contracts.USER_FEATURES + contracts.ITEM_FEATURES + contracts.ON_DEMAND_FEATURES
    # 3 counts + mean + recency + 18 affinities; the same shape for items; 4 on-demand.
    assert len(feats) == 23 + 23 + 4
    refs = contracts.feature_refs()
    assert [r.split(":")[1] for r in refs] == feats
    assert refs[-3:] == [
        f"{contracts.ALS_ODFV}:als_score",
        f"{contracts.CONTENT_ODFV}:content_sim",
        f"{contracts.RECENT_ODFV}:recent_sim",
    ]


# ---------------------------------------------------------------------- scoring


def test_to_matrix_orders_and_fills() -> None:
    feats = contracts.MODEL_FEATURES
    present = [feats[5], feats[0], feats[-1], "not_a_feature"]  # shuffled, with an extra
    frame = pd.DataFrame(
        {
            feats[5]: [1.5, 2.5],
            feats[0]: pd.Series([3, None], dtype="Int64"),
            feats[-1]: ["0.25", "oops"],  # strings are coerced; garbage becomes missing
            "not_a_feature": [9.0, 9.0],
        }
    )[present]
    m = to_matrix(frame)
    assert m.dtype == np.float32
    assert m.shape == (2, len(feats))
    assert m[0, 0] == 3.0 and np.isnan(m[1, 0])
    assert m[:, 5].tolist() == [1.5, 2.5]
    assert m[0, -1] == np.float32(0.25) and np.isnan(m[1, -1])
    untouched = [j for j in range(len(feats)) if j not in (0, 5, len(feats) - 1)]
    assert np.isnan(m[:, untouched]).all()
    assert not (m == 9.0).any()


def test_to_matrix_explicit_columns_and_empty() -> None:
    m = to_matrix(pd.DataFrame({"b": [1.0], "a": [2.0]}), columns=["a", "b", "c"])
    assert m[0, :2].tolist() == [2.0, 1.0] and np.isnan(m[0, 2])
    assert to_matrix(pd.DataFrame(columns=["a"])).shape == (0, len(contracts.MODEL_FEATURES))


# --------------------------------------------------------------------------- oracle


def test_truth_by_day_keeps_the_last_impression_of_a_day() -> None:
    from pipelines.data import truth_by_day

    day = 20_000 * 86_400
    truth = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u1", "u2"],
            "item_id": ["a", "a", "a", "a"],
            # u1/a twice on day 20000 (the later one, 0.6, wins), once on day 20001.
            "timestamp": [day + 50, day + 10, day + 86_400, day + 5],
            "p_engage": np.array([0.6, 0.2, 0.9, 0.4], dtype=np.float32),
        }
    )

    out = truth_by_day(truth).sort_values(["user_id", "day"]).reset_index(drop=True)

    assert out.columns.tolist() == ["user_id", "item_id", "day", "p_engage"]
    assert out["user_id"].tolist() == ["u1", "u1", "u2"]
    assert out["day"].tolist() == [20_000, 20_001, 20_000]
    np.testing.assert_allclose(out["p_engage"], [0.6, 0.9, 0.4], rtol=1e-6)


def test_oracle_scores_look_up_the_truth_by_external_id_and_day() -> None:
    from pipelines.evaluation import NO_TRUTH, oracle_scores

    users, items = _mapping({"u1": 1, "u2": 2}), _mapping({"a": 10, "b": 11, "c": 12})
    truth = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u2", "u2", "u3"],
            "item_id": ["a", "b", "a", "a", "a"],
            "day": [100, 100, 100, 101, 100],
            "p_engage": [0.3, 0.9, 0.7, 0.5, 0.1],
        }
    )
    holdout = pd.DataFrame(
        {
            "query_id": [0, 0, 0, 1],
            "user_id": [1, 1, 1, 2],
            "item_id": [11, 12, 10, 10],  # 12 = c: a sampled negative, never shown
            "day": [100, 100, 100, 101],  # u2's query is on day 101, not the 0.7 of day 100
            "label": [2.0, 0.0, 1.0, 1.0],
        }
    )

    scores = oracle_scores(holdout, truth, users, items)

    assert scores.tolist() == [0.9, NO_TRUTH, 0.3, 0.5]
    metrics = per_query_metrics(holdout.assign(score=scores), "score", seed=0)
    assert metrics["ndcg@10"].tolist() == [1.0, 1.0]  # b (2), a (1), then c (0)


def test_an_oracle_row_is_shown_and_not_gated() -> None:
    from pipelines.cli import metrics_table
    from pipelines.report import _rankers

    metrics = {
        "production": None,
        "model": {"ndcg@10": 0.3, "map@10": 0.2, "recall@10": 0.4, "queries": 5},
        "popularity": {"ndcg@10": 0.2, "map@10": 0.1, "recall@10": 0.3, "queries": 5},
        "oracle": {"ndcg@10": 0.1, "map@10": 0.1, "recall@10": 0.1, "queries": 5},
    }

    decision = gate(metrics, tolerance=0.0)  # the oracle (0.1 here) is no bar for the model
    table = metrics_table("2026-06-30", metrics)

    assert decision["passed"] is True and "oracle" not in decision["reason"]
    assert list(table.columns[0].cells) == ["production", "model", "popularity", "oracle"]
    assert _rankers(metrics) == ["model", "popularity", "oracle"]


# --------------------------------------------------------------------------- stage costs


def test_resource_watch_sees_memory_and_cpu_of_the_block() -> None:
    from pipelines import resources

    with resources.watch(interval_s=0.05) as idle:
        pass
    with resources.watch(interval_s=0.05) as busy:
        block = b"x" * (300 * resources.MB)  # written, so every page is resident
        time.sleep(0.3)  # held while waiting, as a driver waits on Spark: sampled
        del block
        spin = sum(i * i for i in range(3_000_000))
    assert spin > 0
    assert busy["driver_peak_pss_mb"] >= idle["driver_peak_pss_mb"] + 250
    assert busy["driver_cpu_s"] > idle["driver_cpu_s"]
    assert {"spark_peak_pss_mb", "spark_cpu_s"} <= busy.keys()  # Spark, if any, apart


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_release_memory_hands_freed_heap_back_to_the_os() -> None:
    """What a stage freed stops counting once it ends: 300 MB of small buffers freed under
    a live one (so glibc cannot shrink its heap from the top) stay resident until
    ``release_memory``. In a process of its own, so the figures are its alone."""
    import subprocess
    import sys

    script = """
import psutil
from pipelines import resources
me = psutil.Process()
def rss(): return me.memory_info().rss // resources.MB
chunks = [bytearray(b"x" * 8192) for _ in range(300 * 128)]  # 300 MB, each in malloc's heap
keep = bytearray(b"y" * 8192)  # on top of them
before = rss()
del chunks
freed = rss()
resources.release_memory()
print(before, freed, rss())
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    before, freed, released = (int(x) for x in out.split())
    assert freed >= before - 50  # freed, but still resident
    assert released <= freed - 250


def test_a_spark_worker_that_exits_keeps_the_cpu_it_used() -> None:
    """A process seen busy and then gone still counts its seconds: a Python worker that
    ends inside a stage must not make the stage's Spark CPU negative."""
    import subprocess
    import sys

    import psutil

    from pipelines import resources

    # Spins for 0.4 s of its own CPU, not of wall time: on a loaded machine a wall-time
    # loop can get less than the 0.1 s this test waits for.
    busy = "import time\nwhile time.process_time() < 0.4: sum(range(999))\ninput()"
    child = subprocess.Popen([sys.executable, "-c", busy], stdin=subprocess.PIPE)
    proc = psutil.Process(child.pid)
    last: dict[int, float] = {}
    deadline = time.monotonic() + 30

    def done_spinning() -> bool:  # asleep in input() after its busy loop
        times = proc.cpu_times()
        return proc.status() == psutil.STATUS_SLEEPING and times.user + times.system > 0.1

    while not done_spinning() and time.monotonic() < deadline:
        time.sleep(0.05)
    seen = resources._cpu([proc], last)
    child.communicate(b"\n")
    assert seen > 0.1
    assert resources._cpu([proc], last) == seen  # gone: its last figure, not zero
    assert resources._cpu([proc]) == 0.0  # without the record it would drop out


# --------------------------------------------------------------------------- lineage


def test_partition_lineage_names_the_range_count_and_bytes(tmp_path: Path) -> None:
    from pipelines import lineage

    days = [date(2024, 1, d) for d in (3, 1, 2)]
    for i, day in enumerate(days):
        path = catalog.LAKE.path(tmp_path, date=day)
        path.parent.mkdir(parents=True)
        path.write_bytes(b"rows of day %d" % i)
    got = lineage.partitions(tmp_path, days)
    assert (got["first"], got["last"], got["count"]) == ("2024-01-01", "2024-01-03", 3)
    assert lineage.partitions(tmp_path, sorted(days)) == got  # order-free
    assert lineage.partitions(tmp_path, days[:2])["sha256"] != got["sha256"]
    catalog.LAKE.path(tmp_path, date=days[0]).write_bytes(b"rows of day 0, edited")
    assert lineage.partitions(tmp_path, days)["sha256"] != got["sha256"]
    with pytest.raises(ValueError, match="at least one partition"):
        lineage.partitions(tmp_path, [])


@pytest.mark.parametrize(
    ("meta", "servable"),
    [
        ({"gate": {"passed": True, "reason": "beats production"}}, True),
        ({"gate": {"passed": False, "reason": "below popularity"}}, False),
        ({"gate": {"passed": "true"}}, False),  # only a recorded True passes
        ({}, False),
    ],
)
def test_only_a_model_whose_lineage_records_a_passed_gate_is_servable(meta, servable) -> None:
    from pipelines.lineage import NotServable, check_servable

    if servable:
        check_servable(meta)
    else:
        with pytest.raises(NotServable, match="did not pass the promotion gate"):
            check_servable(meta)


def test_code_version_is_a_sha_and_a_dirty_flag() -> None:
    from pipelines.lineage import code_version

    version = code_version()
    assert len(version["sha"]) == 40 and isinstance(version["dirty"], bool)


@pytest.mark.parametrize(
    ("env", "expected"),
    [(None, ["/rank$", "/echo$"]), ('["/echo$"]', ["/echo$"]), ("[]", [])],
)
def test_the_traced_urls_are_a_setting(env, expected) -> None:
    """The service's OpenTelemetry exclusions come from CR_SERVING_TRACE_EXCLUDED_URLS, read
    when the service module is imported (as ``bentoml serve`` does)."""
    import json
    import os
    import subprocess
    import sys

    child = {k: v for k, v in os.environ.items() if k != "CR_SERVING_TRACE_EXCLUDED_URLS"}
    if env is not None:
        child["CR_SERVING_TRACE_EXCLUDED_URLS"] = env
    code = "import json; from serving.service import Ranker; print(json.dumps(Ranker.config))"
    out = subprocess.run(
        [sys.executable, "-c", code], env=child, capture_output=True, text=True, check=True
    )
    config = json.loads(out.stdout.strip().splitlines()[-1])
    assert config["tracing"]["excluded_urls"] == expected
