"""Ranking queries built in Spark: positives, sampled and real negatives, query ids, caps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.training_set import (
    HOLDOUT_QUERY_IDS,
    build_queries,
    cap_queries,
    pairable_queries,
    refit_rows,
    sample_queries,
)

pytestmark = pytest.mark.integration

D = 20_000  # 2024-10-04


def _events(rows: list[tuple[int, int, float, int, int]]) -> pd.DataFrame:
    """(user, item, rating, day, hour) -> events with epoch-second timestamps."""
    return pd.DataFrame(
        {
            "user_id": pd.Series([r[0] for r in rows], dtype="int64"),
            "item_id": pd.Series([r[1] for r in rows], dtype="int64"),
            "rating": pd.Series([r[2] for r in rows], dtype="float64"),
            "timestamp": pd.Series([r[3] * 86_400 + r[4] * 3_600 for r in rows], dtype="int64"),
        }
    )


def _random_events(seed: int, n: int, users: int, items: int, labels: tuple[int, int], days: int):
    """``n`` events of random users, items, labels in ``[labels[0], labels[1])`` and times
    over ``days`` days from D."""
    rng = np.random.default_rng(seed)
    return _events(
        [
            (int(u), int(i), float(r), D + int(d), int(h))
            for u, i, r, d, h in zip(
                rng.integers(0, users, n),
                rng.integers(0, items, n),
                rng.integers(*labels, n),
                rng.integers(0, days, n),
                rng.integers(0, 24, n),
                strict=True,
            )
        ]
    )


EVENTS = _events(
    [
        (1, 10, 4.0, D, 9),  # item 10 first seen on D
        (2, 11, 3.0, D, 23),  # item 11 first seen on D
        (2, 12, 5.0, D + 1, 0),  # item 12 first seen on D+1; query (2, D+1)
        (3, 13, 2.0, D + 1, 12),  # item 13 first seen on D+1; query (3, D+1)
        (1, 12, 5.0, D + 2, 1),  # query (1, D+2)
        (1, 14, 3.0, D + 2, 22),  # item 14 first seen on D+2
        (2, 15, 1.0, D + 5, 5),  # after the window
        (1, 11, 2.0, D + 10, 5),  # user 1 rates 11 later: a fair negative before D+10
    ]
)


def _queries(spark, events: pd.DataFrame, first: int, last: int, **kw) -> pd.DataFrame:
    kw = {"negatives": 3, "max_positives": 50, "seed": 0, "impressions": False} | kw
    sdf = spark.createDataFrame(events)
    out = build_queries(spark, sdf, first, last, kw.pop("negatives"), kw.pop("max_positives"), **kw)
    return out.toPandas().sort_values(["query_id", "item_id"]).reset_index(drop=True)


def test_build_queries_hand_worked(spark) -> None:
    out = _queries(spark, EVENTS, D + 1, D + 2)
    # Catalogue before D+1 = {10, 11}; before D+2 = {10, 11, 12, 13}.
    # (1, D+2): positives 12 (5), 14 (3); pool {10,11,12,13} minus rated by D+2 {10,12,14}
    # = {11, 13}: user 1 rates 11 only on D+10, after the query.
    # (2, D+1): positive 12 (5); pool {10, 11} minus rated {11, 12, 15} = {10}.
    # (3, D+1): positive 13 (2); pool {10, 11} minus rated {13} = {10, 11}.
    # Query ids follow (user, day): (1, D+2) -> 0, (2, D+1) -> 1, (3, D+1) -> 2.
    got = {
        qid: (
            int(g["user_id"].iloc[0]),
            int(g["day"].iloc[0]),
            dict(zip(g["item_id"].astype(int), g["label"], strict=True)),
        )
        for qid, g in out.groupby("query_id")
    }
    assert got == {
        0: (1, D + 2, {12: 5.0, 14: 3.0, 11: 0.0, 13: 0.0}),
        1: (2, D + 1, {12: 5.0, 10: 0.0}),
        2: (3, D + 1, {13: 2.0, 10: 0.0, 11: 0.0}),
    }
    stamps = out.groupby("query_id")["event_timestamp"].first()
    assert [pd.Timestamp(t).date().isoformat() for t in stamps] == [
        "2024-10-06",  # D+2 = 20002 days after 1970-01-01
        "2024-10-05",
        "2024-10-05",
    ]
    assert {str(out[c].dtype) for c in ("user_id", "item_id", "query_id")} == {"int64"}
    assert str(out["label"].dtype) == "float64"


@pytest.mark.parametrize("seed", range(3))
def test_build_queries_invariants(spark, seed: int) -> None:
    events = _random_events(100 + seed, 400, users=15, items=60, labels=(1, 6), days=30)
    events = events.drop_duplicates(["user_id", "item_id"])
    out = _queries(spark, events, D + 20, D + 29, negatives=5, max_positives=3, seed=seed)
    ev_day = events["timestamp"] // 86_400
    first_seen = events.assign(day=ev_day).groupby("item_id")["day"].min()
    taken_up = events.assign(day=ev_day).groupby(["user_id", "item_id"])["day"].min()
    rating_of = events.set_index(["user_id", "item_id"])["rating"]
    assert len(out) > 0
    assert out["day"].between(D + 20, D + 29).all()
    # Dense query ids 0..n-1, one (user, day) each.
    n_queries = out.groupby(["user_id", "day"]).ngroups
    assert sorted(out["query_id"].unique()) == list(range(n_queries))
    assert (out.groupby("query_id")[["user_id", "day"]].nunique() == 1).all().all()
    later = 0
    for _, q in out.groupby("query_id"):
        user, day = int(q["user_id"].iloc[0]), int(q["day"].iloc[0])
        pos, neg = q[q["label"] > 0], q[q["label"] == 0]
        assert q["item_id"].is_unique
        assert 1 <= len(pos) <= 3  # the max_positives cap
        for item, label in zip(pos["item_id"], pos["label"], strict=True):
            assert rating_of[(user, item)] == label  # the label is the rating...
            day_of = ev_day[(events["user_id"] == user) & (events["item_id"] == item)]
            assert (day_of == day).any()  # ...given on the query day
        for item in neg["item_id"]:  # not the user's by the query day; later is fair
            since = taken_up.get((user, item))
            assert since is None or since > day
            later += since is not None
        assert (first_seen[neg["item_id"]] < day).all()  # in the catalogue strictly before
        assert len(neg) <= 5
    assert later > 0  # items the user took up later did serve as negatives before


def test_build_queries_caps_positives_and_is_deterministic(spark) -> None:
    events = _events([(1, 100 + i, float(1 + i % 5), D, i) for i in range(6)])
    out = _queries(spark, events, D, D, negatives=4, max_positives=2, seed=3)
    # Nothing is in the catalogue before D, so no negatives: just 2 of the 6 positives.
    assert len(out) == 2
    assert all(
        lbl == 1 + (item - 100) % 5 for item, lbl in zip(out["item_id"], out["label"], strict=True)
    )
    again = _queries(spark, events, D, D, negatives=4, max_positives=2, seed=3)
    pd.testing.assert_frame_equal(out, again)
    assert _queries(spark, EVENTS, D + 50, D + 60).empty


def test_impressions_give_the_skipped_items_as_negatives(spark) -> None:
    """Impression data: a query's negatives are the items shown that day and skipped
    (label 0), never sampled from the catalogue; the latest label of an item counts."""
    events = _events(
        [
            (1, 10, 0.0, D, 1),  # catalogue item, never shown to user 2
            (2, 20, 3.0, D + 1, 1),
            (2, 21, 0.0, D + 1, 2),
            (2, 22, 0.0, D + 1, 3),
            (2, 23, 0.0, D + 1, 4),
            (2, 22, 1.0, D + 1, 5),  # shown again later that day and watched: label 1
            (3, 30, 0.0, D + 1, 1),  # a day of skips only: no query
        ]
    )
    out = _queries(spark, events, D + 1, D + 1, negatives=1, impressions=True)
    assert set(out["user_id"]) == {2}
    labels = dict(zip(out["item_id"], out["label"], strict=True))
    assert {20: 3.0, 22: 1.0}.items() <= labels.items()
    negatives = [i for i, lbl in labels.items() if lbl == 0]
    assert len(negatives) == 1 and negatives[0] in {21, 23}  # capped at 1, never item 10


@pytest.mark.parametrize(
    ("labels", "kept"),
    [
        ([4.0, 0.0, 0.0], True),  # a positive and negatives
        ([5.0, 3.0], True),  # two graded positives: still a pair
        ([4.0], False),  # a single candidate
        ([0.0, 0.0, 0.0], False),  # no positive
        ([3.0, 3.0], False),  # equal positives, nothing below them
        ([4.0, None], False),  # a null label never makes a pair
    ],
)
def test_pairable_queries_one_query(spark, labels: list[float | None], kept: bool) -> None:
    frame = spark.createDataFrame(
        [(7, i, lbl) for i, lbl in enumerate(labels)], "query_id long, item_id long, label double"
    )
    rows, dropped = pairable_queries(frame)
    assert (rows.count(), dropped) == ((len(labels), 0) if kept else (0, 1))


def test_pairable_queries_drop_and_count(spark) -> None:
    frame = spark.createDataFrame(
        pd.DataFrame(
            {
                "query_id": [1, 1, 2, 3, 3, 4, 4, 4],
                "item_id": [1, 2, 1, 1, 2, 1, 2, 3],
                "label": [1.0, 0.0, 2.0, 0.0, 0.0, 3.0, 3.0, 0.0],
            }
        )
    )
    kept, dropped = pairable_queries(frame)
    # 2: one candidate; 3: every label the same. 1 and 4 form pairs.
    assert dropped == 2
    assert sorted({r.query_id for r in kept.collect()}) == [1, 4]


def test_caps_and_samples_take_whole_queries(spark) -> None:
    frame = spark.createDataFrame(
        pd.DataFrame({"query_id": np.repeat(np.arange(200), 5), "item_id": np.tile(range(5), 200)})
    )
    capped = cap_queries(frame, 30, seed=1).toPandas()
    assert capped["query_id"].nunique() == 30
    assert (capped.groupby("query_id").size() == 5).all()
    sampled = sample_queries(frame, 300, seed=1).toPandas()
    assert 150 <= len(sampled) <= 450 and (sampled.groupby("query_id").size() == 5).all()
    assert sample_queries(frame, 5000, seed=1).count() == 1000


@pytest.mark.parametrize("impressions", [False, True])
def test_capping_while_building_equals_capping_after(spark, impressions: bool) -> None:
    """``max_queries`` picks the queries before their candidates are built (the cheap way
    at scale); the rows are exactly those of building every query and capping after."""
    labels = (0 if impressions else 1, 4)
    events = _random_events(7, 600, users=40, items=80, labels=labels, days=20)
    kw = {"negatives": 3, "max_positives": 2, "seed": 5, "impressions": impressions}
    full = _queries(spark, events, D + 10, D + 19, **kw)
    assert full["query_id"].nunique() > 25
    sdf = spark.createDataFrame(events)
    every = build_queries(spark, sdf, D + 10, D + 19, 3, 2, 5, impressions)
    after = cap_queries(every, 25, seed=9).toPandas()
    built = _queries(spark, events, D + 10, D + 19, max_queries=25, cap_seed=9, **kw)
    assert built["query_id"].nunique() == 25
    after = after[list(built.columns)].sort_values(["query_id", "item_id"])
    pd.testing.assert_frame_equal(built, after.reset_index(drop=True))


def test_refit_rows_put_the_holdout_under_the_training_protocol(spark) -> None:
    """The refit trains on the training window and the holdout: the holdout's queries keep
    at most ``max_positives`` positives and ``negatives`` negatives, and their ids follow
    the training ids (XGBoost keeps 32 bits of a query id); training rows stay as they are."""

    def rows(query: int, labels: list[float]) -> list[tuple]:
        return [(query, 100 * (query % 100) + i, label, D) for i, label in enumerate(labels)]

    ddl = "query_id long, item_id long, label double, day long"
    train = spark.createDataFrame(rows(1, [2.0, 0.0, 0.0, 0.0, 0.0]), ddl)
    first, second = HOLDOUT_QUERY_IDS, HOLDOUT_QUERY_IDS + 1
    holdout = spark.createDataFrame(
        rows(first, [5.0, 3.0, 1.0, 0.0, 0.0, 0.0, 0.0]) + rows(second, [4.0, 0.0]), ddl
    )
    out = refit_rows(train, holdout, negatives=2, max_positives=1, max_queries=10, seed=0)
    got = out.toPandas().groupby("query_id")["label"].agg(lambda x: sorted(x, reverse=True))
    assert list(got.index) == [1, 2, 3]  # the holdout's ids follow the training ids
    assert got[1] == [2.0, 0.0, 0.0, 0.0, 0.0]  # a training query is kept whole
    assert len(got[2]) == 3 and got[2][0] > 0 and got[2][1:] == [0.0, 0.0]
    assert got[3] == [4.0, 0.0]
    again = refit_rows(train, holdout, negatives=2, max_positives=1, max_queries=10, seed=0)
    assert sorted(again.toPandas()["item_id"]) == sorted(out.toPandas()["item_id"])
    capped = refit_rows(train, holdout, negatives=2, max_positives=1, max_queries=2, seed=0)
    kept = capped.toPandas().groupby("query_id").size()
    assert len(kept) == 2 and all(kept[q] == len(got[q]) for q in kept.index)  # whole queries
