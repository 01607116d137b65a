"""The fast serving path on the cluster profile's Feast store (``infra/cluster``: Redis
online, the registry in Postgres): the same features as on SQLite and as Feast's own SDK
read, on random requests, after the same Spark materialization.

Uses the machine's Redis (``CR_TEST_REDIS``; database 15, emptied afterwards) and Postgres
(``CR_TEST_POSTGRES``; a database of the test's own, dropped afterwards). A missing service
fails the test.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from feast_repo import feast_repo

from pipelines import catalog, contracts
from pipelines.config import PROJECT_ROOT

pytestmark = pytest.mark.integration

REDIS = os.environ.get("CR_TEST_REDIS", "127.0.0.1:6379")
REDIS_DB = 15  # the tests' own database on the machine's Redis, emptied afterwards
POSTGRES = os.environ.get("CR_TEST_POSTGRES", "postgres@127.0.0.1:5432")
CLUSTER_YAML = PROJECT_ROOT / "infra" / "cluster" / "feature_store.yaml"
DAYS = [datetime(2024, 3, d, tzinfo=UTC) for d in range(1, 11)]
USERS, ITEMS = 200, 300


def _snapshots(
    key: str, features: list[str], entities: int, seed: int, vectors: tuple[list[str], ...] = ()
) -> pd.DataFrame:
    """Random rows on random days, 5 % of the values null; a vector's (``vectors``) null as
    a whole, as a real one is (an item no one engaged with has no ALS factors), so that
    the scores built from 32 values each are not null on nearly every row."""
    rng = np.random.default_rng(seed)
    rows = [(e, day) for e in range(entities) for day in DAYS if rng.random() < 0.4]
    frame = pd.DataFrame(rows, columns=[key, "event_timestamp"])
    values = rng.random((len(frame), len(features))).astype(np.float32)
    grouped = [features.index(c) for vector in vectors for c in vector]
    scalar = np.setdiff1d(np.arange(len(features)), grouped)
    values[:, scalar] = np.where(
        rng.random((len(frame), len(scalar))) < 0.05, np.nan, values[:, scalar]
    )
    for vector in vectors:
        span = [features.index(c) for c in vector]
        values[np.ix_(rng.random(len(frame)) < 0.05, span)] = np.nan
    return pd.concat([frame, pd.DataFrame(values, columns=features)], axis=1)


@contextmanager
def postgres_database() -> Iterator[str]:
    """A database of the test's own on the machine's Postgres, dropped afterwards."""
    import psycopg

    name = f"cr_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"postgresql://{POSTGRES}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql+psycopg://{POSTGRES}/{name}"
        finally:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@contextmanager
def stores(data_dir, connection: str) -> Iterator[tuple]:
    """Settings on SQLite (the local default) and on ``infra/cluster/feature_store.yaml``
    with its Redis at ``connection``, both applied and loaded with the same snapshots."""
    from pipelines import feature_store

    users = _snapshots("user_id", contracts.USER_FEATURES, USERS, 1)
    items = _snapshots("item_id", contracts.ITEM_FEATURES, ITEMS, 2)
    user_factors = _snapshots(
        "user_id",
        contracts.USER_VECTORS,
        USERS,
        3,
        (contracts.USER_FACTORS, contracts.USER_CONTENT, contracts.USER_RECENT),
    )
    item_factors = _snapshots(
        "item_id",
        contracts.ITEM_VECTORS,
        ITEMS,
        4,
        (contracts.ITEM_FACTORS, contracts.ITEM_CONTENT),
    )
    with (
        feast_repo(data_dir, users, items, user_factors, item_factors) as sqlite,
        postgres_database() as registry,
        pytest.MonkeyPatch.context() as env,
    ):
        env.setenv("CR_FEAST_REGISTRY_URL", registry)
        env.setenv("CR_REDIS_CONNECTION", connection)
        on_redis = sqlite.model_copy(update={"feature_store_yaml": CLUSTER_YAML})
        for entry, n in ((catalog.USER_IDS, USERS), (catalog.ITEM_IDS, ITEMS)):
            ids = pd.DataFrame(
                {"external_id": [f"x{i}" for i in range(n)], "internal_id": range(n)}
            )
            entry.path(sqlite).parent.mkdir(parents=True, exist_ok=True)
            ids.to_parquet(entry.path(sqlite), index=False)
        for settings in (sqlite, on_redis):
            feature_store.apply(settings)
            store = feature_store.open_store(settings)
            for view in contracts.ONLINE_VIEWS:
                feature_store.load_online(settings, store, view, DAYS[0], DAYS[-1])
        catalog.WATERMARKS.save(sqlite, dict.fromkeys(contracts.ONLINE_VIEWS, DAYS[-1]))
        yield sqlite, on_redis


@pytest.fixture(scope="module")
def readers(tmp_path_factory, spark):
    import redis

    from pipelines.feature_store import open_store
    from serving.online import FastReader, SdkReader

    client = redis.Redis.from_url(f"redis://{REDIS}/{REDIS_DB}")
    client.ping()  # no Redis: the test fails here, it does not skip
    assert not client.dbsize(), f"Redis db {REDIS_DB} is not empty: it is the tests' own"
    try:
        with stores(tmp_path_factory.mktemp("redis"), f"{REDIS},db={REDIS_DB}") as (sqlite, redis_):
            sqlite_store, redis_store = open_store(sqlite), open_store(redis_)
            yield {
                "sqlite-fast": FastReader(sqlite_store, sqlite),
                "redis-fast": FastReader(redis_store, redis_),
                "redis-sdk": SdkReader(redis_store, redis_),
                "sqlite-sdk": SdkReader(sqlite_store, sqlite),
            }
    finally:
        client.flushdb()  # the tests' database, whatever happened


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
    scored = 0  # rows with collaborative and content scores: the factor views were read
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
        on_demand = [contracts.MODEL_FEATURES.index(f) for f in ("als_score", "content_sim")]
        scored += np.isfinite(want.matrix[:, on_demand]).sum(axis=0)
    assert (scored > 100).all()


@pytest.fixture
def private_redis() -> Iterator[tuple[int, subprocess.Popen]]:
    """A redis-server of the test's own, on a free port, so it can be hung and resumed."""
    import redis

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield port, server
    server.kill()
    server.wait()


def test_a_hung_redis_gives_a_flagged_popularity_fallback_then_features_again(
    tmp_path, spark, private_redis
):
    """The store stops answering (SIGSTOP, as a hung or partitioned Redis): reads come back
    within the socket timeout, flagged, with no user features and the items' popularity from
    memory; once it answers again (SIGCONT), the next read has the user's features."""
    from pipelines.feature_store import open_store
    from serving.online import FastReader

    port, server = private_redis
    timeouts = "socket_timeout=0.2,socket_connect_timeout=0.2"
    with stores(tmp_path, f"127.0.0.1:{port},{timeouts}") as (_, on_redis):
        reader = FastReader(open_store(on_redis), on_redis)
        items = [1, 2, 3, 4, ITEMS + 1]
        good = reader.read(1, items)
        assert good.user_found and not good.store_unavailable
        os.kill(server.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            down = reader.read(1, items)
            waited = time.monotonic() - started
        finally:
            os.kill(server.pid, signal.SIGCONT)
        back = reader.read(1, items)

    assert down.store_unavailable and not down.user_found
    assert waited < 2.0  # bounded by the timeout, never a hung request
    assert np.isnan(down.matrix[:, : len(contracts.USER_FEATURES)]).all()
    np.testing.assert_array_equal(down.popularity, good.popularity)  # items held in memory
    assert back.user_found and not back.store_unavailable
    np.testing.assert_array_equal(back.matrix, good.matrix)
