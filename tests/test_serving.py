"""Serving end to end on a tiny self-made world: real Feast, real BentoML, real XGBoost.

The fixture writes feature snapshots and id maps that follow the contracts, applies and
materializes the Feast repo, trains two tiny boosters and promotes the first. API tests
run in-process through ``Ranker.to_asgi()``; hot reload and infra-validation use a real
``bentoml serve`` subprocess.
"""

from __future__ import annotations

import functools
import sqlite3
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from pipelines import catalog, contracts

pytestmark = pytest.mark.integration

N_USERS = 4  # u1..u4 have features; u5 is mapped but has none
N_ITEMS = 12  # i1..i12; item i<j> has popularity j at the last snapshot
SNAPSHOTS = [datetime(2024, 1, d, tzinfo=UTC) for d in (1, 2, 3)]


@dataclass
class World:
    settings: object
    tag_a: str
    tag_b: str


def _snapshots(key: str, ids: list[int], features: list[str], rng) -> pd.DataFrame:
    frames = []
    for n, ts in enumerate(SNAPSHOTS):
        frame = pd.DataFrame(
            rng.random((len(ids), len(features)), dtype=np.float32), columns=features
        )
        frame.insert(0, key, pd.Series(ids, dtype="int64"))
        frame.insert(1, "event_timestamp", pd.Timestamp(ts))
        if key == "item_id":  # popularity grows over time; at the end it is the item number
            frame[contracts.POPULARITY_FEATURE] = (
                np.float32(1 + n) * np.asarray(ids, dtype=np.float32) / len(SNAPSHOTS)
            )
        frames.append(frame)
    out = pd.concat(frames, ignore_index=True)
    out["event_timestamp"] = out["event_timestamp"].astype("datetime64[ms, UTC]")
    return out


def _write_world(settings) -> None:
    rng = np.random.default_rng(7)
    for kind, key, features, n in (
        ("user", "user_id", contracts.USER_FEATURES, N_USERS),
        ("item", "item_id", contracts.ITEM_FEATURES, N_ITEMS),
    ):
        out = catalog.FEATURE_TABLE.path(settings, kind=kind)
        out.mkdir(parents=True, exist_ok=True)
        _snapshots(key, list(range(1, n + 1)), features, rng).to_parquet(
            out / "part-0.parquet", index=False
        )
    for entry, prefix, n in (
        (catalog.USER_IDS, "u", N_USERS + 1),
        (catalog.ITEM_IDS, "i", N_ITEMS),
    ):
        path = entry.path(settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(
            {
                "external_id": [f"{prefix}{i}" for i in range(1, n + 1)],
                "internal_id": pd.Series(range(1, n + 1), dtype="int64"),
            }
        ).to_parquet(path, index=False)


def _booster(seed: int):
    import xgboost as xgb

    rng = np.random.default_rng(seed)
    n_queries, per_query = 20, 10
    x = rng.random((n_queries * per_query, len(contracts.MODEL_FEATURES)), dtype=np.float32)
    y = rng.integers(0, 3, n_queries * per_query)
    qid = np.repeat(np.arange(n_queries), per_query)
    dtrain = xgb.DMatrix(x, label=y, qid=qid, feature_names=contracts.MODEL_FEATURES)
    params = {"objective": "rank:ndcg", "max_depth": 3, "eta": 0.3, "seed": seed}
    return xgb.train(params, dtrain, num_boost_round=5)


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    data_dir = tmp_path_factory.mktemp("serving-data")
    with pytest.MonkeyPatch.context() as mp:
        # Everything that reads the environment must see the tmp world.
        mp.setenv("CR_DATA_DIR", str(data_dir))
        mp.setenv("BENTOML_HOME", str(data_dir / "bentoml"))
        mp.delenv("CR_MODEL_TAG", raising=False)
        from pipelines.config import Settings, get_settings

        get_settings.cache_clear()
        settings = Settings(data_dir=data_dir)
        settings.export_env()

        from pipelines import feature_store, registry

        _write_world(settings)
        feature_store.apply(settings)
        feature_store.materialize(
            settings, SNAPSHOTS[0] - timedelta(days=1), SNAPSHOTS[-1] + timedelta(days=1)
        )
        lineage = {
            "code": {"sha": "test"},
            "metrics": {"ndcg@10": 0.5},
            "params": {"max_depth": 3},
            "gate": {"passed": True, "reason": "fixture"},
        }
        tag_a = registry.save_model(_booster(1), metadata=lineage, settings=settings)
        tag_b = registry.save_model(_booster(2), metadata=lineage, settings=settings)
        registry.promote(tag_a, settings, reason="fixture")
        yield World(settings=settings, tag_a=tag_a, tag_b=tag_b)
        get_settings.cache_clear()


@functools.cache
def ranker_app():
    """The service's ASGI app, built once per process: BentoML registers its Prometheus
    metrics the first time an app runs, and a second app would register them again."""
    from serving.service import Ranker

    return Ranker.to_asgi()


@pytest.fixture(scope="module")
def client(world):
    """In-process: the service's ASGI app, with its lifespan (which builds the service)."""
    from starlette.testclient import TestClient

    with TestClient(ranker_app()) as c:
        yield c


@pytest.fixture(scope="module")
def server(world):
    """A real ``bentoml serve`` following the production pointer."""
    from pipelines.infra_validation import serve

    with serve(world.settings, None) as base:
        yield base


# --- the API contract, in-process -----------------------------------------------------------

ALL_ITEMS = [f"i{i}" for i in range(1, N_ITEMS + 1)]


def test_rank_known_user(client, world):
    from serving.service import RankResponse

    resp = client.post("/rank", json={"user_id": "u1", "item_ids": ALL_ITEMS})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    RankResponse.model_validate(body, strict=True)  # the hand-written JSON is the contract
    assert body["model_version"] == world.tag_a
    assert body["fallback"] is False
    assert body["unknown_item_ids"] == []
    scores = [it["score"] for it in body["items"]]
    assert sorted(it["item_id"] for it in body["items"]) == sorted(ALL_ITEMS)
    assert scores == sorted(scores, reverse=True)
    assert all(np.isfinite(scores))
    # serving.lean answered it; BentoML's route answers the refused bodies: same Server
    refused = client.post("/rank", json={"user_id": "u1", "item_ids": []})
    assert refused.status_code == 400
    assert resp.headers["server"] == refused.headers["server"] == "BentoML Service/content_ranker"


def test_rank_matches_offline_scoring(client, world):
    """The server's scores are the booster's scores on the same online features."""
    from pipelines import feature_store, registry
    from pipelines.scoring import score, to_matrix

    resp = client.post("/rank", json={"user_id": "u2", "item_ids": ["i3", "i7"]}).json()
    frame = feature_store.online_features(world.settings, 2, [3, 7])
    expected = score(registry.load_booster(world.tag_a, world.settings), to_matrix(frame))
    got = {it["item_id"]: it["score"] for it in resp["items"]}
    assert got == pytest.approx({"i3": float(expected[0]), "i7": float(expected[1])}, rel=1e-5)


def test_rank_top_k_and_unknown_items(client):
    body = client.post(
        "/rank", json={"user_id": "u1", "item_ids": ["i1", "nope", "i2", "i3", "zzz"], "k": 2}
    ).json()
    assert len(body["items"]) == 2
    assert body["unknown_item_ids"] == ["nope", "zzz"]
    assert {it["item_id"] for it in body["items"]} <= {"i1", "i2", "i3"}


def test_rank_all_items_unknown(client, world):
    resp = client.post("/rank", json={"user_id": "u1", "item_ids": ["x", "y"]})
    assert resp.status_code == 200
    assert resp.json() == {
        "model_version": world.tag_a,
        "items": [],
        "unknown_item_ids": ["x", "y"],
        "fallback": False,
        "online_store_unavailable": False,
        "stale_user": False,
        "stale_item_ids": [],
    }


@pytest.mark.parametrize("user", ["ghost", "u5"])  # not mapped / mapped without features
def test_rank_unknown_user_falls_back_to_popularity(client, user):
    body = client.post("/rank", json={"user_id": user, "item_ids": ["i2", "i9", "i5"]}).json()
    assert body["fallback"] is True
    assert [it["item_id"] for it in body["items"]] == ["i9", "i5", "i2"]
    assert [it["score"] for it in body["items"]] == pytest.approx([9.0, 5.0, 2.0])


@pytest.mark.parametrize(
    "body",
    [
        {"item_ids": ["i1"]},
        {"user_id": "u1", "item_ids": []},
        {"user_id": "u1", "item_ids": [f"i{i}" for i in range(1001)]},
        {"user_id": "u1", "item_ids": "i1"},
        {"user_id": "u1", "item_ids": ["i1"], "k": 0},
        {"user_id": 1, "item_ids": ["i1"]},
        {"user_id": "u1", "item_ids": [1, 2]},
    ],
    ids=["no-user", "empty", "1001", "not-a-list", "k0", "int-user", "int-items"],
)
def test_rank_rejects_malformed_bodies(client, body):
    resp = client.post("/rank", json=body)
    assert resp.status_code == 400, resp.text
    assert "validation error" in resp.json()["error"]
    # the documented shape (InvalidArgument): detail is one readable string
    assert isinstance(resp.json()["detail"], str) and resp.json()["detail"]


JSON = {"content-type": "application/json"}
DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    ("route", "content", "headers", "status", "says"),
    [
        ("/rank", b"{not json", JSON, 400, "Invalid JSON"),
        ("/rank", DEEP, JSON, 400, "recursion limit"),
        ("/rank", b'{"user_id": "u1", "item_ids": ' + DEEP + b"}", JSON, 400, "recursion"),
        ("/rank", b'{"user_id": "u1", "item_ids": ["i1"], "k": NaN}', JSON, 400, "k:"),
        # multipart without a boundary was a 500 on every POST route
        ("/rank", b"x", {"content-type": "multipart/form-data"}, 415, "multipart/form-data"),
        ("/echo", b"x", {"content-type": "multipart/form-data"}, 415, "multipart/form-data"),
        ("/model_version", b"x", {"content-type": "multipart/form-data"}, 415, "multipart"),
        ("/rank", b'{"user_id": "u1", "item_ids": ["i1"]}', {"content-type": "text/plain"}, 415, "text/plain"),
        ("/rank", b"{}", {**JSON, "content-length": "ten"}, 400, "Content-Length"),
        # not UTF-8: msgspec raises UnicodeDecodeError, which serving.lean hands on too
        ("/rank", b'{"user_id": "\xff", "item_ids": ["i1"]}', JSON, 400, "invalid unicode"),
    ],
    ids=["invalid", "deep", "deep-field", "nan", "multipart", "multipart-echo",
         "multipart-version", "text", "bad-length", "not-utf8"],
)  # fmt: skip
def test_bad_requests_get_a_clear_4xx_in_the_documented_shape(
    client, route, content, headers, status, says
):
    resp = client.post(route, content=content, headers=headers)
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error", "detail"} and isinstance(body["detail"], str)
    assert says in body["detail"], body


def test_bodies_over_the_limit_are_refused_declared_or_streamed(client):
    from serving.service import MAX_BODY_BYTES

    big = b'{"user_id": "u1", "item_ids": ["' + b"i" * MAX_BODY_BYTES + b'"]}'
    declared = client.post("/rank", content=big, headers=JSON)

    def chunks():  # no Content-Length: the body streams in chunks
        for start in range(0, len(big), 65_536):
            yield big[start : start + 65_536]

    streamed = client.post("/rank", content=chunks(), headers=JSON)
    for resp in (declared, streamed):
        assert resp.status_code == 413, resp.text
        assert str(MAX_BODY_BYTES) in resp.json()["detail"]
    # a small body without a Content-Length is read whole and answered
    small = b'{"user_id": "u1", "item_ids": ["i1", "i2"]}'
    ok = client.post("/rank", content=iter([small[:10], small[10:]]), headers=JSON)
    assert ok.status_code == 200, ok.text
    assert {it["item_id"] for it in ok.json()["items"]} == {"i1", "i2"}


def test_the_document_says_what_the_guard_does(client):
    doc = client.get("/docs.json").json()
    for route in ("/rank", "/echo"):
        post = doc["paths"][route]["post"]
        assert post["requestBody"]["required"] is True
        assert {"400", "413", "415"} <= set(post["responses"])
    assert "get" in doc["paths"]["/model_version"]


@pytest.mark.parametrize("method", ["get", "post"])
def test_model_version(client, world, method):
    resp = getattr(client, method)("/model_version")
    assert resp.status_code == 200
    body = resp.json()
    assert body["model_version"] == world.tag_a
    assert body["metadata"]["code"] == {"sha": "test"}
    assert body["metadata"]["feature_service"] == contracts.FEATURE_SERVICE


def test_model_version_answers_head_like_get(client):
    got, head = client.get("/model_version"), client.head("/model_version")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]
    assert int(head.headers["content-length"]) == len(got.content)


def test_no_loadable_model_is_a_clear_503(world, monkeypatch):
    """A second ASGI app in one process trips BentoML's Prometheus registry, so call the
    service class directly: a returned starlette Response goes out as is."""
    from serving.service import Ranker

    monkeypatch.setenv("CR_MODEL_TAG", "content_ranker:doesnotexist")
    ranker = Ranker.inner()
    assert ranker.__is_ready__() is False
    import asyncio

    for resp in (asyncio.run(ranker.rank("u1", ["i1"])), ranker.model_version()):
        assert resp.status_code == 503
        assert b"doesnotexist" in resp.body


def test_a_model_that_did_not_pass_the_gate_is_refused_with_a_clear_log_line(
    world, monkeypatch, caplog
):
    from pipelines import registry
    from serving.service import Ranker

    tag = registry.save_model(
        _booster(3),
        metadata={"gate": {"passed": False, "reason": "below popularity"}},
        settings=world.settings,
    )
    monkeypatch.setenv("CR_MODEL_TAG", tag)
    ranker = Ranker.inner()
    with caplog.at_level("ERROR"):
        assert ranker.__is_ready__() is False
    assert ranker.model.current is None
    refused = [r.getMessage() for r in caplog.records if "refusing to load" in r.getMessage()]
    assert refused and "did not pass the promotion gate (below popularity)" in refused[0]
    assert ranker.model_version().status_code == 503


# --- registry ---------------------------------------------------------------------------------


def test_promotion_is_refused_without_a_passed_gate_by_the_api_and_the_cli(world):
    import os
    import subprocess
    import sys

    from pipelines import registry
    from pipelines.config import PROJECT_ROOT
    from pipelines.lineage import NotServable

    failed = registry.save_model(
        _booster(4),
        metadata={"gate": {"passed": False, "reason": "slices"}},
        settings=world.settings,
    )
    unchecked = registry.save_model(_booster(5), metadata={}, settings=world.settings)
    pointer = catalog.PRODUCTION.path(world.settings).read_bytes()
    with pytest.raises(NotServable, match="cannot be promoted.*promotion gate \\(slices\\)"):
        registry.promote(failed, world.settings, reason="by hand")
    with pytest.raises(NotServable, match="no gate decision is recorded"):
        registry.promote(unchecked, world.settings, reason="by hand")
    cli = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "promote", failed],
        cwd=PROJECT_ROOT,
        env=os.environ | {"COLUMNS": "200"},
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 1
    assert "cannot be promoted" in cli.stdout and "did not pass the promotion gate" in cli.stdout
    assert catalog.PRODUCTION.path(world.settings).read_bytes() == pointer  # untouched


def test_promote_and_rollback_keep_history(world):
    from pipelines import registry

    s = world.settings
    assert registry.read_pointer(s).tag == world.tag_a
    try:
        pointer = registry.promote(world.tag_b, s, reason="better")
        assert pointer.tag == world.tag_b
        assert pointer.previous[0] == world.tag_a
        assert registry.read_pointer(s) == pointer  # what promote returned is what it stored
        assert registry.production_tag(s) == world.tag_b
        assert registry.rollback(s) == world.tag_a
        assert registry.read_pointer(s).rolled_back_from == world.tag_b
        with pytest.raises(RuntimeError, match="no previous"):
            registry.rollback(s)
        with pytest.raises(Exception, match="(?i)not found"):
            registry.promote("content_ranker:doesnotexist", s, reason="typo")
        assert registry.production_tag(s) == world.tag_a  # a failed promotion changes nothing
    finally:
        if registry.production_tag(s) != world.tag_a:
            registry.promote(world.tag_a, s, reason="restore")
    assert not list(catalog.PRODUCTION.path(s).parent.glob("*.tmp"))


def test_model_info_has_lineage(world):
    from pipelines import registry

    info = registry.model_info(world.tag_a, world.settings)
    assert info["tag"] == world.tag_a
    assert info["metadata"]["feature_names"] == contracts.MODEL_FEATURES
    assert info["metadata"]["metrics"] == {"ndcg@10": 0.5}
    assert info["creation_time"]


# --- a real server ----------------------------------------------------------------------------


def _wait_for_version(
    base: str, body: dict, tag: str, timeout_s: float = 5.0, in_a_row: int = 20
) -> float:
    """Seconds until /rank reports ``tag`` on ``in_a_row`` requests in a row.

    Each worker swaps on its own (in the background), so one answer with the new tag
    does not mean every worker has it; many in a row, spread over the workers, does.
    """
    import httpx

    started, streak = time.monotonic(), 0
    while time.monotonic() - started < timeout_s:
        streak = (
            streak + 1
            if httpx.post(f"{base}/rank", json=body).json()["model_version"] == tag
            else 0
        )
        if streak == in_a_row:
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"{tag} not served by every worker within {timeout_s}s")


def test_server_hot_reloads_on_promotion(server, world):
    import httpx

    from pipelines import registry

    body = {"user_id": "u1", "item_ids": ["i1", "i2"]}
    assert httpx.post(f"{server}/rank", json=body).json()["model_version"] == world.tag_a
    try:
        registry.promote(world.tag_b, world.settings, reason="hot reload test")
        assert _wait_for_version(server, body, world.tag_b) < 5
        assert httpx.post(f"{server}/model_version").json()["model_version"] == world.tag_b
    finally:
        registry.rollback(world.settings)
    assert _wait_for_version(server, body, world.tag_a) < 5
    assert httpx.get(f"{server}/readyz").status_code == 200


SAMPLES = [
    {"user_id": "u1", "item_ids": ALL_ITEMS, "k": 5},
    {"user_id": "ghost", "item_ids": ["i1", "i2"]},
    {"user_id": "u3", "item_ids": ["i4", "unknown"]},
]


def test_infra_validate_passes_for_a_good_tag(world):
    from pipelines.infra_validation import infra_validate

    result = infra_validate(world.tag_b, world.settings, SAMPLES)
    assert result["passed"], result
    assert result["requests"] == len(SAMPLES)
    assert result["latency_ms_p50"] is not None


def test_infra_validate_fails_for_a_missing_tag(world):
    from pipelines.infra_validation import infra_validate

    result = infra_validate("content_ranker:doesnotexist", world.settings, SAMPLES, timeout_s=90)
    assert result["passed"] is False
    assert result["errors"]
    assert "doesnotexist" in result["reason"]


# --- the fast online path against the Feast SDK path -------------------------------------

N_USER = len(contracts.USER_FEATURES)


@pytest.fixture(scope="module")
def readers(world):
    from pipelines.feature_store import open_store
    from serving.online import FastReader, SdkReader

    store = open_store(world.settings)
    return FastReader(store, world.settings), SdkReader(store, world.settings)


def test_fast_and_sdk_paths_agree_on_random_requests(readers, world):
    from pipelines import registry, scoring

    fast, sdk = readers
    booster = registry.load_booster(world.tag_a, world.settings)
    rng = np.random.default_rng(0)
    for _ in range(25):
        user = int(rng.integers(1, N_USERS + 2))  # includes a user with no features
        items = [int(i) for i in rng.integers(1, N_ITEMS + 3, size=int(rng.integers(1, 40)))]
        a, b = fast.read(user, items), sdk.read(user, items)
        np.testing.assert_allclose(a.matrix, b.matrix, rtol=1e-6, equal_nan=True)
        assert (a.user_found, a.user_stale) == (b.user_found, b.user_stale)
        np.testing.assert_array_equal(a.item_stale, b.item_stale)
        np.testing.assert_allclose(
            scoring.score(booster, a.matrix), scoring.score(booster, b.matrix), rtol=1e-6
        )


def test_unknown_items_are_all_missing(readers):
    fast, _ = readers
    batch = fast.read(1, [1, 10_000])
    assert not np.isnan(batch.matrix[0, N_USER:-1]).all()
    assert np.isnan(batch.matrix[1, N_USER:-1]).all()


@contextmanager
def store_locked(world):
    """Another connection holds SQLite's exclusive lock on the online store, as a writer
    stuck inside its commit would: no reader gets in until it lets go."""
    from pipelines.feature_store import open_store
    from serving.online import sqlite_path

    with closing(sqlite3.connect(sqlite_path(open_store(world.settings)), timeout=10)) as conn:
        conn.isolation_level = None
        conn.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")


def test_a_locked_store_is_a_flagged_fallback_within_the_busy_timeout(readers, world):
    from serving.online import SQLITE_BUSY_TIMEOUT_S

    fast, _ = readers
    assert fast.read(1, [1, 2]).user_found
    items_before = fast.items.copy()
    with store_locked(world):
        started = time.monotonic()
        locked = fast.read(1, [1, 2])
        waited = time.monotonic() - started
    assert locked.store_unavailable and not locked.user_found
    assert waited < SQLITE_BUSY_TIMEOUT_S + 1.0  # not sqlite3's default 5 s per statement
    np.testing.assert_array_equal(fast.items, items_before)  # items still from memory
    again = fast.read(1, [1, 2])
    assert again.user_found and not again.store_unavailable


@pytest.mark.parametrize("path", ["fast", "sdk"])
def test_values_older_than_the_ttl_count_as_missing(readers, path):
    fast, sdk = readers
    reader = fast if path == "fast" else sdk
    fresh = reader.read(1, [1, 2])
    assert not fresh.user_stale and not fresh.item_stale.any()
    longest = max(float(ttl.max()) for ttl in reader.ttls)  # per view, of users and items
    # Move "now" past every TTL: every value is stale, hence NaN, and says so.
    last_ts = fresh_now = reader.clock.now()
    reader.clock.now = lambda: last_ts + longest + 86_400
    try:
        stale = reader.read(1, [1, 2])
    finally:
        del reader.clock.now
    assert fresh_now == reader.clock.now()
    assert stale.user_stale and not stale.user_found
    assert stale.item_stale.all()
    assert np.isnan(stale.matrix[:, :-1]).all()
    assert np.isnan(stale.matrix[:, -1]).all()  # the on-demand feature of missing inputs


def test_metrics_expose_phase_latencies_with_the_model_version(client, world):
    client.post("/rank", json={"user_id": "u1", "item_ids": ALL_ITEMS})
    client.post("/rank", json={"user_id": "ghost", "item_ids": ALL_ITEMS})
    text = client.get("/metrics").text
    for phase in ("features", "model", "total"):
        assert f'phase="{phase}"' in text
    assert f'model_version="{world.tag_a}"' in text
    assert "rank_request_seconds_bucket" in text
    assert 'outcome="fallback"' in text


def test_echo_is_the_same_contract_without_work(client):
    assert client.post("/echo", json={"user_id": "u1", "item_ids": ["a", "b"]}).json() == {
        "user_id": "u1",
        "items": 2,
    }
    assert client.post("/echo", json={"user_id": "u1", "item_ids": []}).status_code == 400


def test_hot_swap_under_load_fails_no_request(server, world):
    """Promotion and rollback while 4 clients hammer /rank: every request answers 200,
    and once the pointer moves, later requests report the new model within 5 s."""
    import threading

    import httpx

    from pipelines import registry

    body = {"user_id": "u1", "item_ids": ALL_ITEMS, "k": 3}
    results: list[tuple[float, int, str]] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=10) as http:
            while not stop.is_set():
                try:
                    resp = http.post(f"{server}/rank", json=body)
                    version = (
                        resp.json().get("model_version", "") if resp.status_code == 200 else ""
                    )
                    results.append((time.monotonic(), resp.status_code, version))
                except httpx.HTTPError:
                    results.append((time.monotonic(), 0, ""))

    with httpx.Client() as http:  # every worker settled on tag_a (earlier tests swapped)
        streak = 0
        deadline = time.monotonic() + 10
        while streak < 20 and time.monotonic() < deadline:
            same = http.post(f"{server}/rank", json=body).json()["model_version"] == world.tag_a
            streak = streak + 1 if same else 0
            time.sleep(0.02)
    threads = [threading.Thread(target=client) for _ in range(4)]
    started = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(1.5)
    promoted_at = time.monotonic()
    registry.promote(world.tag_b, world.settings, reason="hot swap under load")
    time.sleep(3)
    rolled_back_at = time.monotonic()
    registry.rollback(world.settings)
    time.sleep(3)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started

    assert len(results) / elapsed > 50, f"only {len(results) / elapsed:.0f} RPS"
    assert [r for r in results if r[1] != 200] == []
    before = {v for ts, _, v in results if ts <= promoted_at}
    assert before == {world.tag_a}

    def switch_seconds(since: float, until: float, tag: str) -> float:
        """Time from ``since`` to the first response after which only ``tag`` is served."""
        window = [(ts, v) for ts, _, v in results if since < ts <= until]
        last_old = max((ts for ts, v in window if v != tag), default=since)
        assert any(v == tag for _, v in window)
        return last_old - since

    assert switch_seconds(promoted_at, rolled_back_at, world.tag_b) < 2.5
    assert switch_seconds(rolled_back_at, started + elapsed, world.tag_a) < 2.5


def test_a_locked_store_under_load_gives_flagged_fallbacks_never_a_5xx(server, world):
    """The online store's file is locked for 3 s while 4 clients hammer /rank: every
    request answers, 200 with a flagged popularity fallback (or a clear 503), never a 500
    and never hung; once the lock goes, the next requests have features again."""
    import worlds

    body = {"user_id": "u1", "item_ids": ALL_ITEMS}
    with worlds.Load(f"{server}/rank", body) as load:
        time.sleep(1.5)
        down_at = time.monotonic()
        with store_locked(world):
            gone_at = time.monotonic()
            time.sleep(3)
            up_at = time.monotonic()
        back_at = load.wait_for_features(up_at)
        time.sleep(1)
    worlds.assert_store_outage_was_served(
        load, down_at, gone_at, up_at, back_at, items=len(ALL_ITEMS)
    )
