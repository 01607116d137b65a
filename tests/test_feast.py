"""Feast on a temporary copy of the repo: apply, point-in-time historical retrieval, online read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from feast_repo import feast_repo

from pipelines import catalog, contracts

pytestmark = pytest.mark.integration

DAY = [datetime(2024, 3, d, tzinfo=UTC) for d in range(1, 6)]


def _snapshot(key: str, entity: int, ts: datetime, features: list[str], value: float) -> dict:
    return {key: entity, "event_timestamp": ts, **dict.fromkeys(features, np.float32(value))}


@pytest.fixture(scope="module")
def store_settings(tmp_path_factory, spark):
    # User 1: value 1 from day 1, value 3 from day 3. Items 1 and 2: 10 / 20 from day 1,
    # 11 / 21 from day 3. Genre flags and affinities are the same value, so
    # genre_match = 18 * aff * genre.
    users = pd.DataFrame(
        [
            _snapshot("user_id", 1, DAY[0], contracts.USER_FEATURES, 0.01),
            _snapshot("user_id", 1, DAY[2], contracts.USER_FEATURES, 0.03),
        ]
    )
    items = pd.DataFrame(
        [
            _snapshot("item_id", 1, DAY[0], contracts.ITEM_FEATURES, 10),
            _snapshot("item_id", 2, DAY[0], contracts.ITEM_FEATURES, 20),
            _snapshot("item_id", 1, DAY[2], contracts.ITEM_FEATURES, 11),
            _snapshot("item_id", 2, DAY[2], contracts.ITEM_FEATURES, 21),
        ]
    )
    with feast_repo(tmp_path_factory.mktemp("feast"), users, items) as settings:
        yield settings


def test_apply_registers_the_repo(store_settings):
    from pipelines import feature_store

    applied = feature_store.apply(store_settings)
    assert set(applied) >= {
        contracts.USER_VIEW,
        contracts.ITEM_VIEW,
        contracts.USER_FACTOR_VIEW,
        contracts.ITEM_FACTOR_VIEW,
        contracts.ODFV,
        contracts.ALS_ODFV,
        contracts.FEATURE_SERVICE,
    }
    store = feature_store.open_store(store_settings)
    service = store.get_feature_service(contracts.FEATURE_SERVICE)
    names = {f.name for proj in service.feature_view_projections for f in proj.features}
    # the model's inputs, and the factors the collaborative score is computed from
    assert names == {*contracts.MODEL_FEATURES, *contracts.USER_VECTORS, *contracts.ITEM_VECTORS}


def test_historical_retrieval_is_point_in_time_and_keeps_every_row(store_settings):
    from pipelines import feature_store

    feature_store.apply(store_settings)
    entity_df = pd.DataFrame(
        {
            "user_id": [1, 1, 1, 1],
            "item_id": [1, 2, 1, 2],
            "event_timestamp": [DAY[1], DAY[1], DAY[3], DAY[3]],  # day 2 twice, day 4 twice
            "label": [5.0, 0.0, 3.0, 0.0],
        }
    )
    out = feature_store.historical_features_pandas(store_settings, entity_df)
    # Two items for the same (user, timestamp) both survive (Feast's Dask store drops one).
    assert len(out) == 4
    assert out["label"].tolist() == [5.0, 0.0, 3.0, 0.0]
    assert out["event_timestamp"].tolist() == entity_df["event_timestamp"].tolist()
    # Day 2 sees the day-1 snapshot; day 4 sees the day-3 one.
    np.testing.assert_allclose(out["user_cnt_all"], [0.01, 0.01, 0.03, 0.03], rtol=1e-6)
    assert out["item_pop_all"].tolist() == [10.0, 20.0, 11.0, 21.0]
    # genre_match = 18 slots * aff * flag: 18 * 0.01 * 10 = 1.8 ; 18 * 0.03 * 21 = 11.34
    np.testing.assert_allclose(out["genre_match"], [1.8, 3.6, 18 * 0.03 * 11, 11.34], rtol=1e-4)


def test_materialize_then_online_read_returns_the_latest_rows(store_settings):
    from pipelines import feature_store

    feature_store.apply(store_settings)
    window = feature_store.materialize(store_settings, DAY[0], DAY[4] + timedelta(seconds=1))
    assert window["end"].startswith("2024-03-05")
    online = feature_store.online_features(store_settings, 1, [1, 2, 99])
    np.testing.assert_allclose(online["user_cnt_all"], [0.03, 0.03, 0.03], rtol=1e-6)
    assert online["item_pop_all"].tolist()[:2] == [11.0, 21.0]
    assert pd.isna(online["item_pop_all"].iloc[2])  # unknown item: missing, not an error
    np.testing.assert_allclose(
        online["genre_match"].iloc[:2], [18 * 0.03 * 11, 18 * 0.03 * 21], rtol=1e-4
    )
    # A re-run of the same window is a clean upsert: same values, no error.
    feature_store.materialize(store_settings, DAY[0], DAY[4] + timedelta(seconds=1))
    again = feature_store.online_features(store_settings, 1, [1, 2])
    assert again["item_pop_all"].tolist() == [11.0, 21.0]


def test_rows_without_fresh_features_are_kept_with_nulls(store_settings):
    """An item first seen after the query time, and a user with no row at all: the row
    stays, with missing values where there is nothing to join (a real PIT join)."""
    from pipelines import feature_store

    feature_store.apply(store_settings)
    entity_df = pd.DataFrame(
        {
            "user_id": [1, 1, 7],
            "item_id": [1, 1, 2],
            # before any snapshot of item 1 (day 1 00:00 minus a day); day 2; day 2
            "event_timestamp": [DAY[0] - timedelta(days=1), DAY[1], DAY[1]],
            "label": [4.0, 5.0, 1.0],
        }
    )
    out = feature_store.historical_features_pandas(store_settings, entity_df)
    assert out["label"].tolist() == [4.0, 5.0, 1.0]
    assert out[contracts.USER_FEATURES].iloc[0].isna().all()  # user 1 not yet seen either
    np.testing.assert_allclose(out["item_pop_all"].iloc[1:], [10.0, 20.0])
    assert out[contracts.USER_FEATURES].iloc[2].isna().all()  # user 7 never seen
    assert pd.isna(out["genre_match"].iloc[0]) and pd.isna(out["genre_match"].iloc[2])


def test_feast_apply_between_runs_keeps_the_materialization_watermark(store_settings):
    """feast#2905: ``feast apply`` can reset Feast's own watermark; ours survives it, so the
    next run resumes where the last one ended instead of from the beginning."""
    from pipelines import feature_store

    # Earlier tests in this module loaded later windows; start from an empty watermark.
    catalog.WATERMARKS.path(store_settings).unlink(missing_ok=True)
    feature_store.apply(store_settings)
    first = feature_store.materialize(store_settings, DAY[0], DAY[2])
    feature_store.apply(store_settings)  # a redeploy between two daily runs
    second = feature_store.materialize(store_settings, DAY[0], DAY[4])
    assert second["start"] == first["end"]
    online = feature_store.online_features(store_settings, 1, [1, 2])
    assert online["item_pop_all"].tolist() == [11.0, 21.0]  # the day-3 rows arrived


def test_the_registry_hash_names_the_definitions_not_the_registration(store_settings):
    """The lineage's registry hash: unchanged by a re-apply and a materialization, changed
    by a changed definition (a view's TTL)."""
    from pipelines import feature_store, lineage

    feature_store.apply(store_settings)
    store = feature_store.open_store(store_settings)
    before = lineage.registry_hash(store)
    feature_store.materialize(store_settings, DAY[0], DAY[4])
    feature_store.apply(store_settings)
    assert lineage.registry_hash(feature_store.open_store(store_settings)) == before
    view = store.get_feature_view(contracts.USER_VIEW)
    view.ttl = view.ttl + timedelta(days=1)
    store.apply([view])
    try:
        assert lineage.registry_hash(feature_store.open_store(store_settings)) != before
    finally:
        feature_store.apply(store_settings)  # the repo's own definitions again
    assert lineage.registry_hash(feature_store.open_store(store_settings)) == before
