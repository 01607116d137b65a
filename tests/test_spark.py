"""Spark stages on tiny hand-made frames: feature values, no leakage, query partitioning, training."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

from pipelines import catalog, contracts
from pipelines.config import Settings
from pipelines.evaluation import per_query_metrics, summarise
from pipelines.features import (
    Features,
    Previous,
    compute_features,
    day_number,
    events_since,
    first_snapshot_day,
    item_attributes,
)
from pipelines.scoring import score, to_matrix
from pipelines.training import (
    fits_at_once,
    make_ranker,
    partition_by_query,
    ranker_input,
    ranker_params,
    shuffle_labels,
    train_ranker,
    train_rankers,
)
from pipelines.training_set import day_to_date

pytestmark = pytest.mark.integration

D = day_number(date(2024, 12, 15))  # D+17 is 2025-01-01, so item ages change inside the data
LAST = D + 40  # snapshots go up to LAST + 1
GENRES = ["Action", "Comedy"]  # slot g00 = Action, g01 = Comedy; "Drama" has no slot

ITEM_IDS = pd.DataFrame({"external_id": ["a", "b", "c", "d"], "internal_id": [1, 2, 3, 4]})
ITEMS_META = pd.DataFrame(
    {
        "item_id": ["a", "b", "c", "d"],
        "genres": ["Action|Comedy", "Comedy", "Drama", "Action"],
        "year": [2000, 1990, None, 2020],
    }
)


def _events(rows: list[tuple[int, int, float, int, int]]) -> pd.DataFrame:
    """(user, item, rating, day, second of the day) -> an events frame."""
    return pd.DataFrame(
        {
            "user_id": pd.Series([r[0] for r in rows], dtype="int64"),
            "item_id": pd.Series([r[1] for r in rows], dtype="int64"),
            "rating": pd.Series([r[2] for r in rows], dtype="float64"),
            "timestamp": pd.Series([r[3] * 86_400 + r[4] for r in rows], dtype="int64"),
        }
    )


BASE = [
    (1, 1, 4.0, D, 0),  # first second of the day
    (1, 2, 2.0, D, 86_399),  # last second of the day
    (1, 3, 5.0, D + 3, 3_600),
    (2, 1, 3.0, D, 43_200),
    (2, 2, 1.0, D + 10, 100),
    (2, 2, 4.0, D + 18, 7_200),  # on a snapshot day (D+10+8): must not count on D+18 itself
    (1, 1, 1.0, LAST + 5, 0),  # after last_day: must be ignored
]

A3, C3 = 1 / 3, 2 / 3  # genre counts Action 1, Comedy 2 -> affinities 1/3, 2/3

# (user, day offset) -> cnt_7d, cnt_30d, cnt_all, mean_rating, days_since_last, aff_g00, aff_g01.
# Snapshots at d+1, d+8, d+31 for active days d (D, D+3 for user 1; D, D+10 for user 2).
USERS = {
    # user 1: D (4, 2: items a, b), D+3 (5: item c, no slotted genre)
    (1, 1): (2, 2, 2, 3.0, 1, A3, C3),  # window [D-6, D]: two events, mean (4+2)/2
    (1, 4): (3, 3, 3, 11 / 3, 1, A3, C3),  # [D-3, D+3]: three, mean (4+2+5)/3
    (1, 8): (1, 3, 3, 11 / 3, 5, A3, C3),  # 7d [D+1, D+7]: only D+3; 8 - 3 = 5 days since
    (1, 11): (0, 3, 3, 11 / 3, 8, A3, C3),  # 7d [D+4, D+10]: nothing
    (1, 31): (0, 1, 3, 11 / 3, 28, A3, C3),  # 30d [D+1, D+30]: only D+3
    (1, 34): (0, 0, 3, 11 / 3, 31, A3, C3),  # 30d [D+4, D+33]: nothing
    # user 2: D (3: item a = Action|Comedy), D+10 (1: item b = Comedy), D+18 (4: item b again)
    (2, 1): (1, 1, 1, 3.0, 1, 0.5, 0.5),
    (2, 8): (0, 1, 1, 3.0, 8, 0.5, 0.5),
    (2, 11): (1, 2, 2, 2.0, 1, A3, C3),  # 7d [D+4, D+10]: D+10; mean (3+1)/2
    (2, 18): (0, 2, 2, 2.0, 8, A3, C3),  # 7d [D+11, D+17]: nothing; D+18's own event unseen
    # From D+19: ratings 3, 1, 4 -> mean 8/3; genres Action 1, Comedy 3 -> 1/4, 3/4.
    (2, 19): (1, 3, 3, 8 / 3, 1, 0.25, 0.75),  # 7d [D+12, D+18]; 30d [D-11, D+18]
    (2, 26): (0, 3, 3, 8 / 3, 8, 0.25, 0.75),  # 7d [D+19, D+25]; 30d [D-4, D+25]
    (2, 31): (0, 2, 3, 8 / 3, 13, 0.25, 0.75),  # 30d [D+1, D+30]: D+10, D+18
    (2, 41): (0, 1, 3, 8 / 3, 23, 0.25, 0.75),  # = LAST + 1; 30d [D+11, D+40]: D+18
}

# (item, day offset) -> pop_7d, pop_30d, pop_all, mean_rating, age_years, genre_g00, genre_g01.
ITEMS = {
    # item a (2000, Action|Comedy): ratings 4 and 3 on D
    (1, 1): (2, 2, 2, 3.5, 24, 1, 1),  # 2024 - 2000
    (1, 8): (0, 2, 2, 3.5, 24, 1, 1),
    (1, 31): (0, 0, 2, 3.5, 25, 1, 1),  # D+31 is 2025-01-15: 2025 - 2000
    # item b (1990, Comedy): 2 on D, 1 on D+10, 4 on D+18
    (2, 1): (1, 1, 1, 2.0, 34, 0, 1),
    (2, 8): (0, 1, 1, 2.0, 34, 0, 1),
    (2, 11): (1, 2, 2, 1.5, 34, 0, 1),  # D+11 is 2024-12-26
    (2, 18): (0, 2, 2, 1.5, 35, 0, 1),  # D+18 is 2025-01-02; its own event not yet counted
    (2, 19): (1, 3, 3, 7 / 3, 35, 0, 1),  # mean (2 + 1 + 4) / 3
    (2, 26): (0, 3, 3, 7 / 3, 35, 0, 1),
    (2, 31): (0, 2, 3, 7 / 3, 35, 0, 1),  # 30d [D+1, D+30]: D+10, D+18
    (2, 41): (0, 1, 3, 7 / 3, 35, 0, 1),  # 30d [D+11, D+40]: D+18
    # item c (no year, Drama -> no slot): 5 on D+3
    (3, 4): (1, 1, 1, 5.0, np.nan, 0, 0),
    (3, 11): (0, 1, 1, 5.0, np.nan, 0, 0),
    (3, 34): (0, 0, 1, 5.0, np.nan, 0, 0),
}


def _features(spark, rows, last_day: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    attrs = item_attributes(ITEMS_META, ITEM_IDS, GENRES)
    out = compute_features(
        spark, spark.createDataFrame(_events(rows)), attrs, day_to_date(last_day)
    )
    return out.users.toPandas(), out.items.toPandas()


def _utc(day: int) -> pd.Timestamp:
    return pd.Timestamp(day * 86_400, unit="s", tz="UTC")


def _stamps_utc(frame: pd.DataFrame) -> pd.Series:
    ts = pd.to_datetime(frame["event_timestamp"])
    return ts.dt.tz_localize("UTC") if ts.dt.tz is None else ts.dt.tz_convert("UTC")


def _by_day(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    days = (_stamps_utc(frame) - pd.Timestamp(0, tz="UTC")).dt.days - D
    return frame.assign(offset=days).set_index([key, "offset"]).sort_index()


def test_item_attributes_slots() -> None:
    attrs = item_attributes(ITEMS_META, ITEM_IDS, GENRES).set_index("item_id")
    assert attrs["item_genre_g00"].tolist() == [1.0, 0.0, 0.0, 1.0]  # Action: a, d
    assert attrs["item_genre_g01"].tolist() == [1.0, 1.0, 0.0, 0.0]  # Comedy: a, b
    assert (attrs[[f"item_genre_{s}" for s in contracts.GENRE_SLOTS[2:]]] == 0.0).all().all()
    assert attrs.loc[1, "year"] == 2000 and np.isnan(attrs.loc[3, "year"])


def test_compute_features_hand_computed(spark) -> None:
    users, items = _features(spark, BASE, LAST)
    assert users.columns.tolist() == ["user_id", "event_timestamp", *contracts.USER_FEATURES]
    assert items.columns.tolist() == ["item_id", "event_timestamp", *contracts.ITEM_FEATURES]

    # Every stamp is a UTC midnight, and nothing is stamped after LAST + 1.
    for frame in (users, items):
        stamps = _stamps_utc(frame)
        assert (stamps == stamps.dt.floor("D")).all()
        assert stamps.max() == _utc(LAST + 1)

    u = _by_day(users, "user_id")
    assert set(u.index) == set(USERS)  # exactly the snapshot days, none from the late event
    cols = [
        "user_cnt_7d",
        "user_cnt_30d",
        "user_cnt_all",
        "user_mean_rating",
        "user_days_since_last",
        "user_aff_g00",
        "user_aff_g01",
    ]
    for key, expected in USERS.items():
        assert u.loc[key, cols].tolist() == pytest.approx(expected, rel=1e-6), key
        others = u.loc[key, [f"user_aff_{s}" for s in contracts.GENRE_SLOTS[2:]]]
        assert (others == 0.0).all(), key

    i = _by_day(items, "item_id")
    assert set(i.index) == set(ITEMS)
    cols = [
        "item_pop_7d",
        "item_pop_30d",
        "item_pop_all",
        "item_mean_rating",
        "item_age_years",
        "item_genre_g00",
        "item_genre_g01",
    ]
    for key, expected in ITEMS.items():
        assert i.loc[key, cols].tolist() == pytest.approx(expected, rel=1e-6, nan_ok=True), key
    assert (users.drop(columns=["event_timestamp"]).dtypes.iloc[1:] == "float32").all()


def test_compute_features_no_leakage(spark) -> None:
    cutoff = D + 10  # the first run knows days <= cutoff
    later = [
        (1, 1, 1.0, cutoff + 1, 0),  # the very next day, same user and item
        (2, 3, 5.0, cutoff + 1, 86_399),
        (2, 4, 2.0, cutoff + 2, 10),  # a new item
        (3, 2, 4.0, cutoff + 5, 10),  # a new user
        (1, 2, 3.0, cutoff + 20, 10),
    ]
    early = [r for r in BASE if r[3] <= cutoff]
    users_a, items_a = _features(spark, early, cutoff)
    users_b, items_b = _features(spark, BASE + later, LAST)

    for a, b, key in ((users_a, users_b, "user_id"), (items_a, items_b, "item_id")):
        assert _stamps_utc(a).max() == _utc(cutoff + 1)
        a = a.assign(event_timestamp=_stamps_utc(a))
        b = b.assign(event_timestamp=_stamps_utc(b))
        seen = b[b["event_timestamp"] <= _utc(cutoff + 1)]
        order = [key, "event_timestamp"]
        pd.testing.assert_frame_equal(
            a.sort_values(order).reset_index(drop=True),
            seen.sort_values(order).reset_index(drop=True),
        )
        assert len(b) > len(seen)  # the later events did produce later rows


def test_incremental_runs_give_the_rows_of_a_run_from_scratch(spark) -> None:
    """A run from scratch through day T against one through T - 6 followed by six
    daily runs, each reading only the lake days from ``events_since`` and the previous
    state: the same snapshots, row for row, and each daily run writes only its new days."""
    rng = np.random.default_rng(8)
    last = D + 100
    rows = [
        (int(u), int(rng.integers(1, 5)), float(rng.integers(1, 6)), d, int(rng.integers(86_400)))
        for d in range(D, last + 1)
        for u in rng.choice(np.arange(1, 31), size=rng.integers(0, 6), replace=False)
    ]
    events = _events(rows).assign(day=lambda f: f["timestamp"] // 86_400)
    attrs = item_attributes(ITEMS_META, ITEM_IDS, GENRES)

    def run(through: int, previous: Previous | None) -> Features:
        since = events_since(previous)
        frame = events if since is None else events[events["day"] >= day_number(since)]
        ev = spark.createDataFrame(frame.drop(columns="day"))
        return compute_features(spark, ev, attrs, day_to_date(through), previous)

    def local(frame):  # the state as a later run reads it back: a fresh, short lineage
        return spark.createDataFrame(frame.toPandas())

    full = run(last, None)
    parts, previous = [], None
    for through in range(last - 6, last + 1):
        out = run(through, previous)
        users, items = out.users.toPandas(), out.items.toPandas()
        if previous is not None:
            first = pd.Timestamp(first_snapshot_day(previous), tz="UTC")
            assert (_stamps_utc(users) >= first).all() and (_stamps_utc(items) >= first).all()
            assert len(users) < 300  # a day's snapshots, not the history
        parts.append((users, items))
        previous = Previous(day_to_date(through), local(out.user_state), local(out.item_state))

    for i, (frame, key) in enumerate(((full.users, "user_id"), (full.items, "item_id"))):
        expected = frame.toPandas().sort_values([key, "event_timestamp"]).reset_index(drop=True)
        got = pd.concat([p[i] for p in parts]).sort_values([key, "event_timestamp"])
        assert len(expected) > 300
        pd.testing.assert_frame_equal(got.reset_index(drop=True), expected)
    pd.testing.assert_frame_equal(
        previous.users.toPandas().sort_values("user_id").reset_index(drop=True),
        full.user_state.toPandas().sort_values("user_id").reset_index(drop=True),
    )


def test_a_run_starts_from_the_newest_state_before_its_date_and_drops_what_it_replaced(
    spark, tmp_path
) -> None:
    from datetime import timedelta

    from pipelines.features import STATES_KEPT, previous_state, write_state

    settings = Settings(data_dir=tmp_path)
    days = [date(2024, 3, 1) + timedelta(days=i) for i in range(STATES_KEPT + 3)]

    def state(n: int):
        return spark.createDataFrame(pd.DataFrame({"user_id": [1], "cnt": [float(n)]}))

    def kept(kind: str) -> list[date]:
        paths = {catalog.FEATURE_STATE.path(settings, kind=kind, date=d): d for d in days}
        root = next(iter(paths)).parent
        return sorted(paths[p] for p in root.iterdir())  # KeyError: a folder of no day

    assert previous_state(spark, settings, days[-1]) is None  # no tables, no state
    for kind in ("user", "item"):
        catalog.FEATURE_TABLE.path(settings, kind=kind).mkdir(parents=True)
        write_state(state(0), settings, kind, days[0], None)
        for before, day in zip(days, days[1:], strict=False):
            write_state(state(day.day), settings, kind, day, before)
        assert kept(kind) == days[-STATES_KEPT:]  # only the newest are kept

    previous = previous_state(spark, settings, days[-2])  # a re-run of the day before last
    assert previous.through == days[-3]
    assert previous.users.first()["cnt"] == days[-3].day
    # A backfill from days[-5] recomputes through the last day: the states in between
    # were built on days it replaced, so they go; the one it started from stays.
    start = previous_state(spark, settings, days[-5])
    assert start.through == days[-6]
    write_state(state(99), settings, "user", days[-1], start.through)
    assert kept("user") == [*days[-STATES_KEPT:-5], days[-1]]
    # Only dates both kinds share count.
    assert previous_state(spark, settings, days[-1]).through == days[-6]
    # A run killed while swapping months in left its staging folder: rebuild from scratch.
    items = catalog.FEATURE_TABLE.path(settings, kind="item")
    items.with_name(f"{items.name}.staging").mkdir()
    assert previous_state(spark, settings, days[-1]) is None


def test_writing_from_a_date_replaces_those_snapshots_and_keeps_the_earlier_ones(
    spark, tmp_path
) -> None:
    """An incremental write of the snapshots from mid-month on, over a table that holds
    stale rows from that day (one the recomputation no longer produces), gives the table a
    single write of the same rows gives; the earlier rows of that month stay."""
    from datetime import timedelta

    from pipelines.features import table_rows, write_offline

    days = [date(2024, 1, 20) + timedelta(days=i) for i in range(50)]  # Jan to Mar
    frame = pd.DataFrame(
        {
            "user_id": np.arange(len(days), dtype="int64") % 7,
            "event_timestamp": pd.to_datetime(days, utc=True),
            "user_cnt_all": np.arange(len(days), dtype="float32"),
        }
    )
    since = date(2024, 2, 10)
    early = frame[frame["event_timestamp"] < pd.Timestamp(since, tz="UTC")]
    later = frame[frame["event_timestamp"] >= pd.Timestamp(since, tz="UTC")]
    stale = later.assign(user_cnt_all=np.float32(-1), user_id=99)  # not recomputed

    once, twice = str(tmp_path / "once"), str(tmp_path / "twice")
    assert write_offline(spark.createDataFrame(frame), once, None) == len(frame)
    write_offline(spark.createDataFrame(pd.concat([early, stale])), twice, None)
    assert write_offline(spark.createDataFrame(later), twice, since) == len(later)

    def read(path: str) -> pd.DataFrame:
        return pd.read_parquet(path).sort_values(["event_timestamp", "user_id"], ignore_index=True)

    pd.testing.assert_frame_equal(read(twice), read(once))
    assert read(once)["snapshot_month"].astype(str).unique().tolist() == [
        "2024-01",
        "2024-02",
        "2024-03",
    ]
    assert table_rows(twice) == len(frame) and table_rows(twice, since) == len(later)
    assert not (tmp_path / "twice.staging").exists()


def test_partition_by_query_keeps_groups_whole(spark) -> None:
    rng = np.random.default_rng(0)
    qids = np.repeat(np.arange(40), rng.integers(1, 6, size=40))
    frame = pd.DataFrame({"query_id": qids, "x": rng.random(qids.size)}).sample(
        frac=1.0, random_state=1
    )
    sdf = spark.createDataFrame(frame).repartition(4)
    parts = (
        partition_by_query(sdf, 3)
        .rdd.mapPartitions(lambda rows: [[r.query_id for r in rows]])
        .collect()
    )
    assert sum(len(p) for p in parts) == qids.size
    non_empty = [p for p in parts if p]
    assert len(non_empty) > 1
    owner: dict[int, int] = {}
    for idx, part in enumerate(parts):
        assert part == sorted(part)  # non-decreasing inside a partition
        for q in set(part):
            assert owner.setdefault(q, idx) == idx  # a query lives in one partition only
    assert sorted(owner) == list(range(40))


def _synthetic(n_queries: int, per_query: int, seed: int, start_qid: int = 0) -> pd.DataFrame:
    """Random features; the label (0-3) is driven by ``item_pop_30d`` alone."""
    rng = np.random.default_rng(seed)
    n = n_queries * per_query
    frame = pd.DataFrame(
        rng.normal(size=(n, len(contracts.MODEL_FEATURES))), columns=contracts.MODEL_FEATURES
    )
    x = frame["item_pop_30d"]
    frame["label"] = ((x > 0.0).astype(int) + (x > 0.8).astype(int) + (x > 1.5).astype(int)).astype(
        float
    )
    frame["query_id"] = np.repeat(np.arange(start_qid, start_qid + n_queries), per_query)
    return frame


def test_train_ranker_learns_the_signal(spark) -> None:
    settings = Settings(n_estimators=20, num_workers=2, max_depth=3, seed=0)
    train = _synthetic(60, 10, seed=1)
    booster = train_ranker(spark.createDataFrame(train), ranker_params(settings), 3)
    assert booster.num_features() == len(contracts.MODEL_FEATURES)

    holdout = _synthetic(40, 10, seed=2, start_qid=1_000)
    holdout["model"] = score(booster, to_matrix(holdout))
    holdout["random"] = np.random.default_rng(3).random(len(holdout))
    model = summarise(per_query_metrics(holdout, "model", seed=0))
    random = summarise(per_query_metrics(holdout, "random", seed=0))
    assert model["queries"] == 40
    # The label is a step function of one feature, so the model should be near perfect
    # while a random ranking of 10 candidates sits around 0.5-0.6.
    assert model["ndcg@10"] > 0.9
    assert model["ndcg@10"] > random["ndcg@10"] + 0.2


def test_fits_side_by_side_equal_the_same_fits_one_at_a_time(spark) -> None:
    """``train_rankers`` runs its fits from driver threads, as many at once as the slots
    hold one-worker fits (two on ``local[2]``); each model is the one a fit alone gives."""
    settings = Settings(n_estimators=15, num_workers=1, max_depth=3, seed=0)
    params = ranker_params(settings)
    assert fits_at_once(spark, params) == 2
    assert fits_at_once(spark, ranker_params(Settings(num_workers=2))) == 1
    first = spark.createDataFrame(_synthetic(50, 8, seed=11))
    second = spark.createDataFrame(_synthetic(50, 8, seed=12))
    fits = {"a": (first, []), "b": (second, []), "a without pop": (first, ["item_pop_30d"])}
    together = train_rankers(fits, params, 1, at_once=2)
    assert set(together) == set(fits)
    rows = to_matrix(_synthetic(30, 8, seed=13))
    for name, (frame, without) in fits.items():
        alone = train_ranker(frame, params, 1, without)
        np.testing.assert_allclose(score(together[name], rows), score(alone, rows), atol=1e-6)
    # the ablation could not split on its missing input: another model than "a"
    assert not np.allclose(score(together["a"], rows), score(together["a without pop"], rows))


def test_the_same_rows_in_another_order_train_the_same_model(spark) -> None:
    """XGBoost sums in row order: a training set split into other files, or shuffled in
    another order, must still give the bit-identical model, its ablations too."""
    params = ranker_params(Settings(n_estimators=15, num_workers=1, max_depth=4, seed=0))
    rows = _synthetic(300, 12, seed=21)
    rows["label"] = np.random.default_rng(22).integers(0, 2, len(rows)).astype(float)
    one_way = spark.createDataFrame(rows).repartition(2)
    other_way = spark.createDataFrame(rows.sample(frac=1.0, random_state=23)).repartition(5)
    fits = {"a": (one_way, []), "a without pop": (one_way, ["item_pop_30d"])}
    fits |= {"b": (other_way, []), "b without pop": (other_way, ["item_pop_30d"])}

    def persisted() -> set[int]:
        return set(spark.sparkContext._jsc.getPersistentRDDs().keys())

    before = persisted()
    models = {
        name: bytes(booster.save_raw(raw_format="ubj"))
        for name, booster in train_rankers(fits, params, 1, at_once=2).items()
    }
    assert models["a"] == models["b"]
    assert models["a without pop"] == models["b without pop"]
    assert models["a"] != models["a without pop"]
    assert persisted() == before  # the inputs are released after their fits


def test_xgboost_reads_the_persisted_order_without_sorting_again(spark) -> None:
    """Over the persisted input, Spark drops the sort by query id that XGBoost adds (the
    input already satisfies it), so the rows keep ``ranker_input``'s total order; over
    the same input unpersisted, XGBoost's sort is what reaches the fit."""
    frame = spark.createDataFrame(_synthetic(20, 5, seed=31)).repartition(3)
    ranker = make_ranker(ranker_params(Settings(num_workers=1)))

    def final_plan(prepared) -> str:
        fed, _ = ranker._prepare_input(prepared)
        return fed._jdf.queryExecution().executedPlan().toString()

    cached = ranker_input(frame, 1).persist()
    try:
        assert "Sort [" not in final_plan(cached).split("InMemoryTableScan")[0]
    finally:
        cached.unpersist()
    assert "Sort [qid" in final_plan(ranker_input(frame, 1))


def test_shuffle_labels_permutes_within_queries(spark) -> None:
    train = _synthetic(30, 10, seed=4).assign(item_id=lambda f: np.tile(np.arange(10), 30))
    shuffled = (
        shuffle_labels(spark.createDataFrame(train), seed=5)
        .toPandas()
        .set_index(["query_id", "item_id"])
        .loc[pd.MultiIndex.from_frame(train[["query_id", "item_id"]])]
        .reset_index()[train.columns]
    )
    pd.testing.assert_frame_equal(
        shuffled.drop(columns="label"), train.drop(columns="label"), check_dtype=False
    )
    for qid, group in train.groupby("query_id"):
        got = shuffled.loc[group.index, "label"]
        assert sorted(got) == sorted(group["label"]), qid  # the same multiset per query
    changed = (shuffled["label"] != train["label"]).groupby(train["query_id"]).any()
    assert changed.mean() > 0.5  # most queries get a different order


@pytest.mark.parametrize(("partitions", "workers"), [(1, 2), (2, 2), (3, 2), (5, 1), (4, 3)])
def test_no_query_group_is_split_on_the_way_into_xgboost(spark, partitions, workers) -> None:
    """What XGBoost trains on, after its own repartitioning (xgboost#8491): each query
    whole inside one partition and sorted, whatever the partition count and workers."""
    rng = np.random.default_rng(partitions)
    train = _synthetic(120, 1, seed=partitions)
    train = train.loc[train.index.repeat(rng.integers(1, 9, len(train)))].sample(frac=1.0)
    settings = Settings(num_workers=workers)
    ranker = make_ranker(ranker_params(settings))
    source = spark.createDataFrame(train).repartition(7)  # groups scattered on arrival
    prepared, _ = ranker._prepare_input(ranker_input(source, partitions))
    parts = prepared.rdd.mapPartitions(lambda rows: [[r.qid for r in rows]]).collect()
    assert sum(len(p) for p in parts) == len(train)
    owner: dict[int, int] = {}
    for idx, part in enumerate(parts):
        assert part == sorted(part)
        for q in set(part):
            assert owner.setdefault(q, idx) == idx, f"query {q} split across partitions"
    assert len(owner) == 120


def test_truth_is_joined_to_the_holdout_keys_in_spark(spark, tmp_path) -> None:
    """Evaluation gets the truth of its holdout rows only: none of another day or key."""
    from pipelines import data

    settings = Settings(data_dir=tmp_path)
    path = catalog.TRUTH.path(catalog.dataset_dir(settings))
    path.parent.mkdir(parents=True)
    truth = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u2", "u2", "u3", "u1"],
            "item_id": ["a", "b", "a", "a", "a", "a"],
            "day": [100, 100, 100, 101, 100, 99],
            "p_engage": [0.3, 0.9, 0.7, 0.5, 0.1, 0.2],
        }
    )
    truth.to_parquet(path, index=False)
    keys = pd.DataFrame(
        {"user_id": ["u1", "u2", "u1"], "item_id": ["b", "a", "a"], "day": [100, 101, 99]}
    )

    got = data.holdout_truth(lambda: spark, settings, keys)

    assert sorted(map(tuple, got.to_numpy().tolist())) == [
        ("u1", "a", 99, 0.2),
        ("u1", "b", 100, 0.9),
        ("u2", "a", 101, 0.5),
    ]
    assert list(got.columns) == ["user_id", "item_id", "day", "p_engage"]
    assert data.holdout_truth(lambda: spark, settings, keys.iloc[:0]).empty
    path.unlink()
    assert data.holdout_truth(lambda: spark, settings, keys) is None  # a data set without truth
