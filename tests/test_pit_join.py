"""The Spark point-in-time join against Feast's own ``get_historical_features``.

Snapshots are random over three years, so the 365-day TTL of the views matters; entity
rows fall at random times and on the exact instants of snapshots (the boundary, where a
snapshot stamped at the query time counts).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from feast_repo import feast_repo

from pipelines import contracts

pytestmark = pytest.mark.integration

START = datetime(2021, 1, 1, tzinfo=UTC)
SPAN_DAYS = 1100


def _snapshots(key: str, features: list[str], n_entities: int, rng) -> pd.DataFrame:
    rows = []
    for entity in range(1, n_entities + 1):
        days = np.sort(rng.choice(SPAN_DAYS, size=int(rng.integers(1, 6)), replace=False))
        for day in days:
            values = rng.random(len(features)).astype(np.float32)
            rows.append(
                {
                    key: entity,
                    "event_timestamp": START + timedelta(days=int(day)),
                    **dict(zip(features, values, strict=True)),
                }
            )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def world(tmp_path_factory, spark):
    rng = np.random.default_rng(11)
    users = _snapshots("user_id", contracts.USER_FEATURES, 12, rng)
    items = _snapshots("item_id", contracts.ITEM_FEATURES, 15, rng)
    # The factor views' snapshots fall on other days than the activity views'.
    # (their own generator: the entity rows below stay the same whatever the views' widths)
    user_factors = _snapshots("user_id", contracts.USER_VECTORS, 12, np.random.default_rng(12))
    item_factors = _snapshots("item_id", contracts.ITEM_VECTORS, 15, np.random.default_rng(13))
    n = 900
    stamps = [START + timedelta(seconds=int(s)) for s in rng.integers(0, SPAN_DAYS * 86_400, n)]
    # Every fifth row sits exactly on one of its user's snapshots.
    entity = pd.DataFrame(
        {
            "user_id": rng.integers(1, 14, n),  # user 13 has no snapshot at all
            "item_id": rng.integers(1, 17, n),  # item 16 neither
            "event_timestamp": stamps,
            "label": rng.integers(0, 4, n).astype(float),
        }
    )
    on_snapshot = users.sample(n // 5, replace=True, random_state=3)
    entity.loc[: n // 5 - 1, "user_id"] = on_snapshot["user_id"].to_numpy()
    entity.loc[: n // 5 - 1, "event_timestamp"] = on_snapshot["event_timestamp"].to_numpy()
    entity["on_snapshot"] = entity.index < n // 5
    # One row per (user, timestamp): Feast's Dask store drops the others (see feature_store).
    entity = entity.drop_duplicates(["user_id", "event_timestamp"]).reset_index(drop=True)
    with feast_repo(
        tmp_path_factory.mktemp("pit"), users, items, user_factors, item_factors
    ) as settings:
        from pipelines import feature_store

        feature_store.apply(settings)
        yield settings, users, entity


def test_equal_to_feast_on_every_row_feast_returns(world):
    from pipelines import feature_store

    settings, _, entity = world
    ours = feature_store.historical_features_pandas(settings, entity).assign(
        _row=range(len(entity))
    )
    store = feature_store.open_store(settings)
    service = store.get_feature_service(contracts.FEATURE_SERVICE)
    theirs = (
        store.get_historical_features(
            entity_df=entity.assign(_row=range(len(entity))), features=service
        )
        .to_df()
        .sort_values("_row")
        .reset_index(drop=True)
    )
    assert len(ours) == len(entity)  # every entity row comes back, in order
    assert ours["label"].tolist() == entity["label"].tolist()
    assert len(theirs) >= 100  # enough rows to compare
    mine = ours.set_index("_row").loc[theirs["_row"]]
    # the collaborative and content scores were compared
    assert mine["als_score"].notna().sum() >= 50 and mine["content_sim"].notna().sum() >= 50
    for feature in [*contracts.MODEL_FEATURES, *contracts.USER_VECTORS, *contracts.ITEM_VECTORS]:
        np.testing.assert_allclose(
            mine[feature].to_numpy(dtype=float),
            theirs[feature].to_numpy(dtype=float),
            rtol=1e-6,
            equal_nan=True,
            err_msg=feature,
        )
    # The rows Feast's file store drops have an entity with snapshots, but none in
    # [t - ttl, t]; a point-in-time join keeps them, with nulls for that view.
    dropped = ours[~ours["_row"].isin(theirs["_row"])]
    one_view_each = ["user_cnt_all", "item_pop_all", "als_u00", "als_i00"]
    assert dropped[one_view_each].isna().any(axis=1).all()


def test_matches_a_brute_force_point_in_time_lookup(world):
    """Hand semantics: the newest snapshot with time <= t and >= t - 365 days, else null."""
    from pipelines import feature_store

    settings, users, entity = world
    ours = feature_store.historical_features_pandas(settings, entity)
    ttl = contracts.FEATURE_TTL
    expected = []
    for user, t in zip(entity["user_id"], entity["event_timestamp"], strict=True):
        snaps = users[(users["user_id"] == user) & (users["event_timestamp"] <= t)]
        latest = snaps.sort_values("event_timestamp").tail(1)
        fresh = len(latest) and latest["event_timestamp"].iloc[0] >= t - ttl
        expected.append(float(latest["user_cnt_all"].iloc[0]) if fresh else np.nan)
    np.testing.assert_allclose(ours["user_cnt_all"], expected, rtol=1e-6, equal_nan=True)
    boundary = ours[entity["on_snapshot"]]
    assert len(boundary) > 20 and boundary["user_cnt_all"].notna().all()  # seen at t itself
    assert np.isnan(expected).any() and not np.isnan(expected).all()


def test_the_entity_rows_enter_the_plan_once_per_view(world, spark, tmp_path):
    """Each view's as-of rows come from the entity rows, not from the previous view's join:
    chained, the plan held the entity rows 2 ** views times (16 for the service's 4 views),
    and Spark analysed that tree again at every step and action."""
    from pipelines import feature_store

    settings, _, entity = world
    spark.createDataFrame(entity).write.parquet(str(tmp_path / "entities"))
    entities = spark.read.parquet(str(tmp_path / "entities"))  # as build_training_set reads them
    views, _ = feature_store.service_views(
        feature_store.open_store(settings), contracts.FEATURE_SERVICE
    )
    joined = feature_store.historical_features(spark, settings, entities)
    plan = joined._jdf.queryExecution().analyzed()
    leaves = [plan.collectLeaves().apply(i) for i in range(plan.collectLeaves().size())]
    # the entity rows' relation is the one with their own column
    from_entities = [leaf for leaf in leaves if "on_snapshot" in leaf.toString()]
    assert len(views) == 4
    assert len(from_entities) == 1 + len(views)  # joined onto, and the keys of each view
