"""The fast serving path on Feast's Redis online store: the same features as on SQLite and as
Feast's own SDK read, on random requests, after the same Spark materialization.

Uses the machine's Redis (``CR_TEST_REDIS``, default 127.0.0.1:6379): the test's keys carry
a project name of their own and are deleted afterwards. A missing Redis fails the test.
"""

from __future__ import annotations

import os
import shutil
import uuid
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from feast_repo import feast_repo

from pipelines import catalog, contracts

pytestmark = pytest.mark.integration

REDIS = os.environ.get("CR_TEST_REDIS", "127.0.0.1:6379")
DAYS = [datetime(2024, 3, d, tzinfo=UTC) for d in range(1, 11)]
USERS, ITEMS = 200, 300


def _snapshots(key: str, features: list[str], entities: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [(e, day) for e in range(entities) for day in DAYS if rng.random() < 0.4]
    frame = pd.DataFrame(rows, columns=[key, "event_timestamp"])
    values = rng.random((len(frame), len(features))).astype(np.float32)
    values[rng.random(values.shape) < 0.05] = np.nan
    return pd.concat([frame, pd.DataFrame(values, columns=features)], axis=1)


def _redis_repo(settings, project: str):
    """A copy of the repo whose ``feature_store.yaml`` names a Redis online store (and a
    registry and project of its own), as ``infra/cluster`` does."""
    repo = settings.data_dir / "repo-redis"
    shutil.copytree(settings.feature_repo, repo)
    config = (repo / "feature_store.yaml").read_text()
    config = config.replace("project: content_ranker", f"project: {project}")
    config = config.replace("feast/registry.db", "feast/registry-redis.db")
    start = config.index("online_store:")
    end = config.index("offline_store:")
    online = f"online_store:\n  type: redis\n  connection_string: {REDIS}\n"
    (repo / "feature_store.yaml").write_text(config[:start] + online + config[end:])
    return settings.model_copy(update={"feature_repo": repo})


@pytest.fixture(scope="module")
def readers(tmp_path_factory, spark):
    import redis

    from pipelines import feature_store
    from serving.online import FastReader, SdkReader

    users = _snapshots("user_id", contracts.USER_FEATURES, USERS, 1)
    items = _snapshots("item_id", contracts.ITEM_FEATURES, ITEMS, 2)
    project = f"cr_test_{uuid.uuid4().hex[:10]}"
    client = redis.Redis.from_url(f"redis://{REDIS}")
    client.ping()  # no Redis: the test fails here, it does not skip
    with feast_repo(tmp_path_factory.mktemp("redis"), users, items) as sqlite:
        for entry, n in ((catalog.USER_IDS, USERS), (catalog.ITEM_IDS, ITEMS)):
            ids = pd.DataFrame(
                {"external_id": [f"x{i}" for i in range(n)], "internal_id": range(n)}
            )
            entry.path(sqlite).parent.mkdir(parents=True, exist_ok=True)
            ids.to_parquet(entry.path(sqlite), index=False)
        on_redis = _redis_repo(sqlite, project)
        for settings in (sqlite, on_redis):
            feature_store.apply(settings)
            store = feature_store.open_store(settings)
            for view in (contracts.USER_VIEW, contracts.ITEM_VIEW):
                feature_store.load_online(settings, store, view, DAYS[0], DAYS[-1])
        catalog.WATERMARKS.save(
            sqlite, {v: DAYS[-1] for v in (contracts.USER_VIEW, contracts.ITEM_VIEW)}
        )
        sqlite_store = feature_store.open_store(sqlite)
        redis_store = feature_store.open_store(on_redis)
        try:
            yield {
                "sqlite-fast": FastReader(sqlite_store, sqlite),
                "redis-fast": FastReader(redis_store, on_redis),
                "redis-sdk": SdkReader(redis_store, on_redis),
                "sqlite-sdk": SdkReader(sqlite_store, sqlite),
            }
        finally:
            stale = list(client.scan_iter(match=f"*{project}".encode(), count=1000))
            if stale:
                client.delete(*stale)
    assert not list(client.scan_iter(match=f"*{project}".encode()))


def test_redis_holds_the_rows_feast_wrote(readers):
    fast = readers["redis-fast"]
    assert fast.rows.__class__.__name__ == "_RedisHashes"
    assert np.isfinite(fast.items).any(axis=1).sum() > ITEMS * 0.9


def test_redis_fast_sqlite_fast_and_the_sdk_agree_on_random_requests(readers):
    import xgboost

    rng = np.random.default_rng(7)
    features = rng.random((400, len(contracts.MODEL_FEATURES)))
    train = xgboost.DMatrix(
        features, label=rng.integers(0, 3, 400), qid=np.repeat(np.arange(40), 10)
    )
    booster = xgboost.train({"objective": "rank:ndcg"}, train, num_boost_round=10)
    reference = readers["sqlite-sdk"]
    for _ in range(40):
        user = int(rng.integers(0, USERS + 3))  # a few users with no row at all
        items = [int(i) for i in rng.integers(0, ITEMS + 5, size=int(rng.integers(1, 60)))]
        want = reference.read(user, items)
        for name, reader in readers.items():
            got = reader.read(user, items)
            np.testing.assert_allclose(
                got.matrix, want.matrix, rtol=1e-6, equal_nan=True, err_msg=name
            )
            assert (got.user_found, got.user_stale) == (want.user_found, want.user_stale), name
            np.testing.assert_array_equal(got.item_stale, want.item_stale, err_msg=name)
            np.testing.assert_allclose(
                booster.inplace_predict(got.matrix), booster.inplace_predict(want.matrix), rtol=1e-6
            )
