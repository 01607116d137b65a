"""ALS factor snapshots (pipelines.factors): point in time, kept once fit, refit on change."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines import catalog, contracts, factors
from pipelines.config import Settings

DAY = 86_400


def _events(spark, rows: list[tuple[int, int, float, int]]):
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "day"])
    frame["timestamp"] = frame.pop("day") * DAY + 3_600
    return spark.createDataFrame(frame.astype({"rating": "float64"}))


def _world(seed: int, days: range, users: int = 40, items: int = 30) -> list[tuple]:
    """Two taste groups: users engage with items of their own group."""
    rng = np.random.default_rng(seed)
    rows = []
    for day in days:
        for user in rng.choice(users, size=8, replace=False):
            group = user % 2
            item = int(rng.choice(np.arange(group, items, 2)))
            rows.append((int(user), item, float(rng.integers(1, 4)), day))
    return rows


def _read(settings: Settings, kind: str) -> pd.DataFrame:
    return pd.read_parquet(catalog.FACTOR_TABLE.path(settings, kind=kind))


def test_snapshot_days_are_a_grid_plus_the_serving_day() -> None:
    assert factors.snapshot_days(105, 250, 50) == [100, 150, 200, 250, 251]
    assert factors.snapshot_days(100, 149, 50) == [100, 150]  # serving day on the grid


def test_the_grid_step_follows_the_lake_span_unless_set() -> None:
    auto = Settings(als_every_days=0)
    assert factors.grid_step(auto, 11_072, 12_111) == 180  # ML-1M: 2000-04-25 .. 2003-02-28
    assert factors.grid_step(auto, 20_455, 20_634) == 30  # a 180-day feed
    assert factors.grid_step(auto, 20_455, 20_484) == 7  # a month: the smallest step
    assert factors.grid_step(auto, 0, 449) == 90 and factors.grid_step(auto, 0, 448) == 60
    assert factors.grid_step(Settings(als_every_days=45), 0, 10_000) == 45  # set: kept


def test_als_score_is_the_dot_product_and_null_for_cold_sides() -> None:
    frame = pd.DataFrame(0.0, index=[0, 1], columns=contracts.USER_FACTORS + contracts.ITEM_FACTORS)
    frame.loc[0, ["als_u00", "als_i00", "als_u01", "als_i01"]] = [2.0, 3.0, 1.0, -1.0]
    frame.loc[1, contracts.ITEM_FACTORS] = np.nan  # an item newer than the snapshot
    out = contracts.als_score(frame)["als_score"]
    assert out.iloc[0] == pytest.approx(5.0)
    assert np.isnan(out.iloc[1])


def test_recent_sim_is_the_cosine_of_the_recent_profile_and_the_item_factors() -> None:
    frame = pd.DataFrame(0.0, index=[0, 1], columns=contracts.USER_RECENT + contracts.ITEM_FACTORS)
    frame.loc[0, ["rp_u00", "als_i00", "rp_u01", "als_i01"]] = [1.0, 2.0, 1.0, 0.0]
    frame.loc[1, contracts.USER_RECENT] = np.nan  # a user with no engagement yet
    out = contracts.recent_sim(frame)["recent_sim"]
    assert out.iloc[0] == pytest.approx(2.0 / (np.sqrt(2.0) * 2.0))
    assert np.isnan(out.iloc[1])


def test_a_snapshot_holds_fresh_user_rows_for_the_days_up_to_the_next(spark, tmp_path) -> None:
    """Between snapshots 20 and 40, each user that engaged on day a gets a row at a + 1: its
    ALS factors folded in against snapshot 20's item factors (Spark's implicit normal
    equations for one user), and its recent profile, from its events before a + 1."""
    settings = Settings(data_dir=tmp_path, als_every_days=20, als_iterations=5)
    rows = _world(5, range(0, 45))
    factors.update_factors(spark, _events(spark, rows), settings, first_query_day=20, last_day=44)
    users, items = _read(settings, "user"), _read(settings, "item")
    users = users[users[factors.PARTITION] == 20]
    y = items[items[factors.PARTITION] == 20].set_index("item_id")[contracts.ITEM_FACTORS]
    y = y.dropna().astype("float64")
    days = users["event_timestamp"].map(lambda t: int(t.timestamp()) // DAY)
    expected = {(u, d + 1) for u, _, _, d in rows if 20 <= d <= 38}
    assert (
        set(zip(users["user_id"], days, strict=True)) - {(u, 20) for u in users["user_id"]}
        == expected
    )
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "day"])
    for user, day in sorted(expected)[:: max(1, len(expected) // 6)]:
        before = events[(events["user_id"] == user) & (events["day"] < day)]
        pairs = before.groupby("item_id").agg(rating=("rating", "max"), last=("day", "max"))
        pairs = pairs[pairs.index.isin(y.index)]
        yk = y.loc[pairs.index].to_numpy()
        c = settings.als_alpha * pairs["rating"].to_numpy()
        a = y.to_numpy().T @ y.to_numpy() + (yk * c[:, None]).T @ yk
        a += settings.als_reg * len(yk) * np.eye(contracts.ALS_RANK)
        x = np.linalg.solve(a, ((1 + c)[:, None] * yk).sum(axis=0))
        row = users[(users["user_id"] == user) & (days == day)]
        assert len(row) == 1
        np.testing.assert_allclose(
            row[contracts.USER_FACTORS].to_numpy()[0], x, rtol=1e-3, atol=1e-4
        )
        # the recent profile: the items of the latest engagements (ties: by item id)
        latest = before.sort_values(["day", "item_id"], ascending=[False, True])
        latest = latest.drop_duplicates("item_id").head(contracts.RECENT_ITEMS)["item_id"]
        profile = y.loc[latest[latest.isin(y.index)]].mean().to_numpy()
        np.testing.assert_allclose(
            row[contracts.USER_RECENT].to_numpy()[0], profile, rtol=1e-4, atol=1e-5
        )


def test_a_snapshot_sees_only_events_before_its_day(spark, tmp_path) -> None:
    settings = Settings(data_dir=tmp_path, als_every_days=20, als_iterations=5)
    rows = _world(1, range(0, 60))
    factors.update_factors(spark, _events(spark, rows), settings, first_query_day=20, last_day=59)
    before = _read(settings, "user")
    assert sorted(before[factors.PARTITION].unique()) == [20, 40, 60]

    # Other events from day 40 on: snapshots 20 and 40 must not move, 60 must.
    # (40 is refit too: its fresh user rows, up to day 59, read events from day 40 on.)
    other = [r for r in rows if r[3] < 40] + _world(2, range(40, 60))
    out = factors.update_factors(spark, _events(spark, other), settings, 20, 59)
    assert out["fitted"] == [40, 60]
    after = _read(settings, "user")

    def stamped(frame: pd.DataFrame, day: int) -> pd.DataFrame:
        rows = frame[frame["event_timestamp"] == pd.Timestamp(day * DAY, unit="s", tz="UTC")]
        return rows.sort_values("user_id").reset_index(drop=True)

    for day in (20, 40):
        pd.testing.assert_frame_equal(stamped(before, day), stamped(after, day))
    partition_20 = after[after[factors.PARTITION] == 20]
    pd.testing.assert_frame_equal(
        before[before[factors.PARTITION] == 20].sort_values(["user_id", "event_timestamp"]),
        partition_20.sort_values(["user_id", "event_timestamp"]),
    )
    # each snapshot is stamped at 00:00 of its day, and holds only entities seen before it
    stamps = after.groupby(factors.PARTITION, observed=True)["event_timestamp"].min()
    assert [int(ts.timestamp()) for ts in stamps] == [20 * DAY, 40 * DAY, 60 * DAY]
    seen_by_20 = {r[0] for r in rows if r[3] < 20}
    assert set(stamped(after, 20)["user_id"]) == seen_by_20


def test_snapshots_fit_two_at_a_time_equal_each_fit_alone(spark, tmp_path) -> None:
    """update_factors fits two snapshots at once from two driver threads; every one it
    writes equals fit_snapshot of that day run alone in this thread."""
    settings = Settings(data_dir=tmp_path, als_every_days=15, als_iterations=5)
    events = _events(spark, _world(4, range(0, 60)))
    out = factors.update_factors(spark, events, settings, first_query_day=15, last_day=59)
    assert out["fitted"] == [15, 30, 45, 60]
    users = _read(settings, "user")
    until = dict(zip(out["days"], [*out["days"][1:], None], strict=True))
    for day in out["fitted"]:
        alone = factors.fit_snapshot(events, day, settings, until=until[day])[0].toPandas()
        written = users[users[factors.PARTITION] == day].drop(columns=factors.PARTITION)
        key = ["user_id", "event_timestamp"]
        pd.testing.assert_frame_equal(
            written.sort_values(key).reset_index(drop=True)[alone.columns],
            alone.sort_values(key).reset_index(drop=True),
            check_dtype=False,
        )


def test_snapshots_are_reused_refit_on_a_backfill_and_served_ones_kept(spark, tmp_path) -> None:
    settings = Settings(data_dir=tmp_path, als_every_days=20, als_iterations=5)
    rows = _world(3, range(0, 50))
    events = _events(spark, rows)
    first = factors.update_factors(spark, events, settings, 20, 44)
    assert first["fitted"] == [20, 40, 45]
    assert factors.update_factors(spark, events, settings, 20, 44)["fitted"] == []  # a re-run

    def snapshot(day: int) -> pd.DataFrame:
        items = _read(settings, "item")
        rows = items[items[factors.PARTITION] == day].drop(columns=factors.PARTITION)
        return rows.sort_values("item_id").reset_index(drop=True)

    served = snapshot(45)

    # The next day: only the new serving snapshot is fit; yesterday's, which was served,
    # stays as it was (the skew check joins served rows back to it).
    nxt = factors.update_factors(spark, events, settings, 21, 45)
    assert nxt["fitted"] == [46] and nxt["days"] == [20, 40, 45, 46]
    assert sorted(_read(settings, "item")[factors.PARTITION].unique()) == [20, 40, 45, 46]
    pd.testing.assert_frame_equal(snapshot(45), served)

    # A backfilled partition on day 30 changes what snapshots 40 and 46 were fit on, and
    # the fresh user rows that snapshot 20 holds for days 31 to 39.
    late = _events(spark, [*rows, (0, 1, 3.0, 30)])
    assert factors.update_factors(spark, late, settings, 21, 45)["fitted"] == [20, 40, 46]

    # Another ALS configuration refits the grid's snapshots; the served one stays as served.
    other = settings.model_copy(update={"als_reg": 0.2})
    assert factors.update_factors(spark, late, other, 21, 45)["fitted"] == [20, 40, 46]
    pd.testing.assert_frame_equal(snapshot(45), served)

    # Once the window's first grid day is 40, nothing before it can be reached.
    assert factors.update_factors(spark, late, other, 41, 45)["days"] == [40, 45, 46]


def test_many_als_iterations_fit_without_overflowing_the_stack(spark, tmp_path) -> None:
    """ALS's lineage grows with every iteration; with no checkpoint directory, 20 of them
    overflowed the JVM's stack on ML-1M. fit_snapshot sets one under the data root."""
    settings = Settings(data_dir=tmp_path, als_iterations=40)
    users, items = factors.fit_snapshot(_events(spark, _world(4, range(0, 10))), 10, settings)
    assert users.count() > 0 and items.count() > 0
    assert spark.sparkContext.getCheckpointDir()


def test_the_snapshots_a_run_can_join_are_named_for_its_lineage(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert factors.snapshots_through(settings, 100) == {}  # no factors fit yet
    catalog.FACTOR_MANIFEST.save(settings, {"20": "5:1", "40": "9:2", "46": "12:3"})
    assert factors.snapshots_through(settings, 45) == {"20": "5:1", "40": "9:2"}
    assert factors.snapshots_through(settings, 46) == {"20": "5:1", "40": "9:2", "46": "12:3"}


def test_content_sim_is_the_cosine_and_null_without_a_vector() -> None:
    frame = pd.DataFrame(
        0.0, index=[0, 1, 2], columns=contracts.USER_CONTENT + contracts.ITEM_CONTENT
    )
    frame.loc[0, ["cv_u00", "cv_u01", "cv_i00", "cv_i01"]] = [3.0, 4.0, 6.0, 8.0]
    frame.loc[1, ["cv_u00", "cv_i01"]] = [1.0, 2.0]  # orthogonal
    frame.loc[2, contracts.USER_CONTENT] = np.nan  # a user with no engaged item yet
    out = contracts.content_sim(frame)["content_sim"]
    assert out.iloc[0] == pytest.approx(1.0) and out.iloc[1] == pytest.approx(0.0)
    assert np.isnan(out.iloc[2])


def test_the_content_axes_are_mllibs_pca_axes(spark) -> None:
    """The axes come from numpy's eigensolver on MLlib's covariance, not from MLlib's PCA
    (a full SVD in Java): the same axes, up to their arbitrary signs, and the same mean."""
    from pyspark.ml.feature import PCA
    from pyspark.ml.linalg import Vectors
    from pyspark.mllib.util import MLUtils

    rng = np.random.default_rng(7)
    x = rng.random((60, 12)) * (rng.random((60, 12)) < 0.4)  # sparse, like TF-IDF rows
    x[:, 0] += 3 * x[:, 1]
    frame = spark.createDataFrame([(Vectors.dense(row),) for row in x], ["v"])
    pca = PCA(k=4, inputCol="v").fit(frame).pc.toArray()

    axes, mean = factors._principal_axes(MLUtils.convertVectorColumnsFromML(frame, "v"), 4)

    assert axes.shape == (12, 4)
    np.testing.assert_allclose(np.abs((pca * axes).sum(axis=0)), 1.0, atol=1e-9)
    np.testing.assert_allclose(mean, x.mean(axis=0))


def test_content_vectors_of_a_catalogue_no_event_named_yet_are_empty(spark) -> None:
    """Items the id map does not know (-1) shape the corpus but get no row: an empty frame
    of the vectors' schema, not an error."""
    text = pd.DataFrame({"item_id": [-1] * 4, "text": ["skate tricks", "skate park"] * 2})
    out = factors.content_vectors(spark, text)
    assert out.count() == 0
    assert out.columns == ["item_id", *contracts.ITEM_CONTENT]


def test_content_vectors_come_from_titles_and_topics_and_users_follow_what_they_engaged(
    spark, tmp_path
) -> None:
    """Items of one topic (and title word) point one way, the other topic's another; a
    user's vector is a recency-weighted mean of its engaged items before the snapshot, so
    its cosine is highest with the topic it engaged with. Items shown but never engaged
    with have vectors too; items no event before the snapshot named, and items the id map
    does not know yet, shape the corpus but get no row. A changed catalogue refits."""
    meta = pd.DataFrame(
        {
            "item_id": [f"x{i}" for i in range(12)],
            "title": [("Cooking pasta" if i % 2 else "Skate tricks") + f" {i}" for i in range(12)],
            "genres": ["Food|Home" if i % 2 else "Sport|Outdoor" for i in range(12)],
        }
    )
    id_map = pd.DataFrame({"external_id": [f"x{i}" for i in range(11)], "internal_id": range(11)})
    text = factors.item_text(pd.concat([meta, meta.iloc[:1]]), id_map)  # a duplicate row
    assert text["item_id"].tolist() == [*range(11), -1]
    assert text["text"].iloc[1] == "Cooking pasta 1 topic_food topic_home"

    # user 0 engaged with even (sport) items, user 1 with odd (food) ones; items 8 and 9
    # were shown and skipped (rating 0), item 10 appears only after the snapshot's day.
    rows = [(0, i, 1.0, 5 + i) for i in (0, 2, 4, 6)] + [(1, i, 1.0, 5 + i) for i in (1, 3, 5, 7)]
    rows += [(0, 8, 0.0, 14), (1, 9, 0.0, 14), (0, 10, 1.0, 25)]
    settings = Settings(data_dir=tmp_path, als_every_days=20, als_iterations=3)
    events = _events(spark, rows)
    assert factors.update_factors(spark, events, settings, 20, 19, text)["fitted"] == [20]
    users = _read(settings, "user").set_index("user_id")
    items = _read(settings, "item").set_index("item_id")
    assert sorted(items.index) == list(range(10))
    assert items.loc[[8, 9], contracts.ITEM_FACTORS].isna().all().all()  # cold: no ALS
    assert items[contracts.ITEM_CONTENT].notna().all().all()  # but content for all
    # the same catalogue fits nothing again; another one refits the snapshot
    assert factors.update_factors(spark, events, settings, 20, 19, text)["fitted"] == []
    other = text.assign(text=text["text"].str.replace("pasta", "ramen"))
    assert factors.update_factors(spark, events, settings, 20, 19, other)["fitted"] == [20]
    pairs = pd.DataFrame(
        np.hstack(
            [
                np.repeat(users.loc[[0, 1], contracts.USER_CONTENT].to_numpy(), 10, axis=0),
                np.tile(items.sort_index()[contracts.ITEM_CONTENT].to_numpy(), (2, 1)),
            ]
        ),
        columns=contracts.USER_CONTENT + contracts.ITEM_CONTENT,
    )
    sim = contracts.content_sim(pairs)["content_sim"].to_numpy().reshape(2, 10)
    even, odd = sim[:, 0::2], sim[:, 1::2]
    assert even[0].min() > odd[0].max() and odd[1].min() > even[1].max()
    assert sim[0, 8] > 0.9 and sim[1, 9] > 0.9  # the cold items, by their content alone


def test_a_users_content_vector_weighs_recent_engagement_more(spark) -> None:
    """``0.5 ** (age / half-life)`` per engaged item, by its latest engagement before the
    snapshot; the vector is the weighted mean."""
    vectors = pd.DataFrame(0.0, index=[0, 1], columns=contracts.ITEM_CONTENT)
    vectors.loc[0, "cv_i00"], vectors.loc[1, "cv_i01"] = 1.0, 1.0
    item_vectors = spark.createDataFrame(vectors.rename_axis("item_id").reset_index())
    # item 0 engaged on days 0 and 40 (the latest counts), item 1 on day 10
    events = _events(spark, [(7, 0, 1.0, 0), (7, 1, 1.0, 10), (7, 0, 1.0, 40)])
    latest = factors.latest_engagements(events, 60)
    got = factors.user_content(latest, item_vectors, 60, half_life=10.0).toPandas()
    age0, age1 = 60 - 40 - 1 / 24, 60 - 10 - 1 / 24  # events sit at 01:00
    w0, w1 = 0.5 ** (age0 / 10), 0.5 ** (age1 / 10)
    assert got["user_id"].tolist() == [7]
    assert got.loc[0, "cv_u00"] == pytest.approx(w0 / (w0 + w1), rel=1e-5)
    assert got.loc[0, "cv_u01"] == pytest.approx(w1 / (w0 + w1), rel=1e-5)


def test_fresh_user_rows_hold_the_content_vector_a_snapshot_on_their_day_would(spark) -> None:
    """A fresh row's content vector (computed per user in pandas) is :func:`user_content`
    (Spark) on the same events at the row's day: one recency weighting, two code paths."""
    settings = Settings(content_half_life_days=7.0)
    rng = np.random.default_rng(3)
    vectors = pd.DataFrame(
        rng.normal(size=(30, contracts.CONTENT_DIM)), columns=contracts.ITEM_CONTENT
    )
    item_vectors = spark.createDataFrame(vectors.rename_axis("item_id").reset_index())
    als = pd.DataFrame(rng.normal(size=(30, contracts.ALS_RANK)), columns=contracts.ITEM_FACTORS)
    item_factors = spark.createDataFrame(als.rename_axis("item_id").reset_index())
    events = _events(spark, _world(11, range(0, 30), users=10))
    fresh = factors.fold_in_rows(events, 10, 30, item_factors, item_vectors, settings).toPandas()
    fresh["day"] = fresh["event_timestamp"].map(lambda t: int(t.timestamp()) // DAY)
    assert fresh["day"].between(11, 29).all() and len(fresh) > 20
    for day in (11, 17, 29):
        latest = factors.latest_engagements(events, day)
        want = factors.user_content(latest, item_vectors, day, 7.0).toPandas()
        got = fresh[fresh["day"] == day]
        assert len(got) > 0
        want = want.set_index("user_id").loc[got["user_id"], contracts.USER_CONTENT]
        np.testing.assert_allclose(
            got[contracts.USER_CONTENT].to_numpy(), want.to_numpy(), rtol=1e-4, atol=1e-5
        )


@pytest.mark.parametrize(
    ("buckets", "broadcast_at_run_time"), [(1, False), (3, False), (64, False), (3, True)]
)
def test_fresh_rows_come_out_whole_however_the_users_are_grouped(
    spark, buckets, broadcast_at_run_time
) -> None:
    """The fold-in takes many users per Python call (a bucket of users each): each user's
    rows are :func:`fold_in_state` on all of its events, for each day after one it engaged
    on, once. Also when AQE turns the semi join on users into a broadcast at run time,
    which reads the events unshuffled (a repartition by user would have been dropped)."""
    settings = Settings()
    rng = np.random.default_rng(5)
    als = pd.DataFrame(rng.normal(size=(30, contracts.ALS_RANK)), columns=contracts.ITEM_FACTORS)
    item_factors = spark.createDataFrame(als.rename_axis("item_id").reset_index())
    rows = _world(13, range(0, 30), users=10)
    conf = {"spark.sql.autoBroadcastJoinThreshold": "-1"}  # planned as a sort-merge join
    if broadcast_at_run_time:
        conf["spark.sql.adaptive.autoBroadcastJoinThreshold"] = "10MB"
    before = {k: spark.conf.get(k, None) for k in conf}
    for key, value in conf.items():
        spark.conf.set(key, value)
    try:
        events = _events(spark, rows).repartition(4)
        fresh = factors.fold_in_rows(events, 10, 30, item_factors, None, settings, buckets)
        fresh = fresh.toPandas()
    finally:
        for key, value in before.items():
            spark.conf.unset(key) if value is None else spark.conf.set(key, value)
    fresh["day"] = fresh["event_timestamp"].map(lambda t: int(t.timestamp()) // DAY)
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "day"])
    events = events[events["day"] < 29].assign(timestamp=lambda e: e["day"] * DAY + 3_600)
    expected = 0
    for user, mine in events.groupby("user_id"):
        days = sorted({int(d) + 1 for d in mine["day"] if d >= 10})
        if not days:
            continue
        want = factors.fold_in_state(mine, days, als.to_numpy(), None, settings)
        got = fresh[fresh["user_id"] == user].sort_values("day")
        assert got["day"].tolist() == days  # each day once
        np.testing.assert_allclose(
            got[contracts.USER_VECTORS].to_numpy("float64"),
            want.astype("float32"),
            rtol=1e-6,
            equal_nan=True,
        )
        expected += len(days)
    assert len(fresh) == expected > 20


def test_fold_in_places_each_vector_by_name_whatever_their_widths(monkeypatch) -> None:
    """Content vectors narrower than the ALS factors land in their own columns: the layout
    comes from ``contracts.USER_VECTORS`` by name (a 32-factor ALS once broke this)."""
    content = [f"cv_u{k:02d}" for k in range(8)]
    monkeypatch.setattr(contracts, "USER_CONTENT", content)
    vectors = contracts.USER_FACTORS + content + contracts.USER_RECENT
    monkeypatch.setattr(contracts, "USER_VECTORS", vectors)
    rng = np.random.default_rng(5)
    y, v = rng.normal(size=(6, contracts.ALS_RANK)), rng.normal(size=(6, 8))
    events = pd.DataFrame(
        {"item_id": [0, 3, 5], "rating": [1.0, 2.0, 1.0], "timestamp": [DAY, 3 * DAY, 4 * DAY]}
    )
    settings = Settings(content_half_life_days=2.0)
    out = factors.fold_in_state(events, [5], y, v, settings)
    assert out.shape == (1, len(vectors))
    w = 0.5 ** (np.array([4.0, 2.0, 1.0]) / 2.0)  # ages on day 5 of items 0, 3, 5
    cols = contracts.column_span(vectors, content)
    np.testing.assert_allclose(out[0, cols], (w[:, None] * v[[0, 3, 5]]).sum(0) / w.sum())
    recent = contracts.column_span(vectors, contracts.USER_RECENT)
    np.testing.assert_allclose(out[0, recent], y[[0, 3, 5]].mean(axis=0))
    assert not np.isnan(out).any()


@pytest.mark.parametrize(
    ("window_days", "half_life", "batch"),
    [(0, 3.0, 7), (9, 3.0, 7), (0, 0.5, 4096), (0, 0.01, 4096)],
)
def test_the_batched_fold_in_equals_each_user_folded_in_alone(
    monkeypatch, window_days, half_life, batch
) -> None:
    """:func:`fold_in_users` (running sums over many users at once) gives each user-day what
    :func:`fold_in_state` (one user, one day at a time) gives: with an item engaged again
    later with a weaker and a stronger rating, many events in one second (the recent
    profile's ties), items without factors or past the factor table, users whose recent
    profile has to look past their latest 20 events (repeats), and users split over
    batches of 7 user-days. With all users in one batch and a short half-life (recency
    weights up to 2 ** 32 apart: a light user's sums among heavy ones'), and with one so
    short that the batch hands each user to the per-user fold-in."""
    monkeypatch.setattr(factors, "FOLD_IN_CHUNK_QUERIES", batch)
    rng = np.random.default_rng(11)
    settings = Settings(content_half_life_days=half_life, als_window_days=window_days)
    n_items = 60
    y = rng.normal(size=(n_items, contracts.ALS_RANK))
    y[[3, 17]] = np.nan  # named by events, no factors in the snapshot
    v = rng.normal(size=(n_items - 5, contracts.CONTENT_DIM))  # the last five: no vector
    v[8] = np.nan
    events = []
    for user in rng.choice(1_000, size=25, replace=False):
        size = int(rng.integers(1, 120))
        # repeats: a heavy user's latest 20 events hold fewer than 20 items
        pool = rng.choice(n_items + 4, size=max(2, size // 4), replace=False)
        item = rng.choice(pool, size=size)
        day = rng.integers(0, 40, size=size)
        second = np.where(rng.random(size) < 0.3, 0, rng.integers(0, DAY, size=size))
        rating = rng.integers(1, 6, size=size).astype(float)
        events.append(
            pd.DataFrame(
                {
                    "user_id": user,
                    "item_id": item,
                    "rating": rating,
                    "timestamp": day * DAY + second,
                }
            )
        )
    # 30 items in one second: the recent profile's cut at 20 falls among ties (by item id)
    tied = np.arange(20, 50)
    events.append(
        pd.DataFrame(
            {"user_id": 5_000, "item_id": tied, "rating": 1.0, "timestamp": 30 * DAY + 0 * tied}
        )
    )
    events = pd.concat(events, ignore_index=True).sample(frac=1.0, random_state=3)
    arrays = [
        events[c].to_numpy(t)
        for c, t in [
            ("user_id", "int64"),
            ("item_id", "int64"),
            ("rating", "float64"),
            ("timestamp", "int64"),
        ]
    ]
    users, days, got = factors.fold_in_users(*arrays, 25, y, v, settings)
    expected = 0
    for user, mine in events.groupby("user_id"):
        want_days = sorted({int(t) // DAY + 1 for t in mine["timestamp"] if t >= 25 * DAY})
        rows = users == user
        assert days[rows].tolist() == want_days
        if want_days:
            want = factors.fold_in_state(mine, want_days, y, v, settings)
            np.testing.assert_allclose(got[rows], want, rtol=1e-9, atol=1e-12, equal_nan=True)
        expected += len(want_days)
    assert len(users) == expected > 40
    recent = contracts.column_span(contracts.USER_VECTORS, contracts.USER_RECENT)
    assert np.isfinite(got[:, recent]).all(axis=1).mean() > 0.9  # the comparison has teeth
