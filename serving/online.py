"""Reading the ranker's features from the Feast online store, two ways that give one answer.

- ``SdkReader``: ``FeatureStore.get_online_features`` on the feature service (the
  straightforward path; the baseline and the fallback).
- ``FastReader``: item features (shared by every user) held in process memory as a
  numpy array, reloaded when a materialization finishes; the user's row read with
  one indexed SELECT on Feast's SQLite table, or one HMGET on its Redis store; the
  on-demand feature computed with the same function Feast runs. No pandas, no protobuf
  per item on the hot path.

Both enforce each view's TTL per request (Feast's online read does not: feast#6821):
a value older than the TTL counts as missing and is reported as stale.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines import catalog, contracts
from pipelines.config import Settings

log = logging.getLogger(__name__)
_FLOAT32 = struct.Struct("<f")
# How long a read waits on a lock held by a writer (Feast's materialization holds SQLite's
# lock while it commits a batch) before the request falls back to popularity, flagged.
# sqlite3's default, 5 s, hung every request behind a held lock.
SQLITE_BUSY_TIMEOUT_S = 0.25

N_USER = len(contracts.USER_FEATURES)
N_ITEM = len(contracts.ITEM_FEATURES)
USER_SLICE = slice(0, N_USER)
ITEM_SLICE = slice(N_USER, N_USER + N_ITEM)
AFF_IDX = np.array([contracts.USER_FEATURES.index(f) for f in contracts.USER_AFFINITY])
GENRE_IDX = np.array([contracts.ITEM_FEATURES.index(f) for f in contracts.ITEM_GENRES])
POP_IDX = contracts.ITEM_FEATURES.index(contracts.POPULARITY_FEATURE)
GENRE_MATCH = contracts.MODEL_FEATURES.index("genre_match")
ALS_SCORE = contracts.MODEL_FEATURES.index("als_score")
CONTENT_SIM = contracts.MODEL_FEATURES.index("content_sim")
RECENT_SIM = contracts.MODEL_FEATURES.index("recent_sim")


# The views each side of a request reads, in the order their columns are laid out: a user
# row is the user's activity features then its factor view (ALS factors, content vector,
# recent profile: contracts.USER_VECTORS), each view stamped on its own; an item row
# likewise (its features, then contracts.ITEM_VECTORS).
USER_VIEWS = ((contracts.USER_VIEW, contracts.USER_FEATURES),) + (
    (contracts.USER_FACTOR_VIEW, contracts.USER_VECTORS),
)
ITEM_VIEWS = ((contracts.ITEM_VIEW, contracts.ITEM_FEATURES),) + (
    (contracts.ITEM_FACTOR_VIEW, contracts.ITEM_VECTORS),
)
USER_WIDTH = N_USER + len(contracts.USER_VECTORS)
ITEM_WIDTH = N_ITEM + len(contracts.ITEM_VECTORS)
USER_COLUMNS = [f for _, features in USER_VIEWS for f in features]
ITEM_COLUMNS = [f for _, features in ITEM_VIEWS for f in features]
USER_ALS = contracts.column_span(USER_COLUMNS, contracts.USER_FACTORS)
USER_CONTENT = contracts.column_span(USER_COLUMNS, contracts.USER_CONTENT)
USER_RECENT = contracts.column_span(USER_COLUMNS, contracts.USER_RECENT)
ITEM_ALS = contracts.column_span(ITEM_COLUMNS, contracts.ITEM_FACTORS)
ITEM_CONTENT = contracts.column_span(ITEM_COLUMNS, contracts.ITEM_CONTENT)


@dataclass
class FeatureBatch:
    """Model input for one request, rows in the order of the requested items."""

    matrix: np.ndarray  # float32 [n, len(MODEL_FEATURES)], NaN = missing
    user_found: bool  # the user has a (fresh) row online
    user_stale: bool  # the user's row exists but is older than the view's TTL
    item_stale: np.ndarray  # bool [n]
    now: float = 0.0  # the feature time the TTLs were checked at
    store_unavailable: bool = False  # the online store did not answer: no user features

    @property
    def popularity(self) -> np.ndarray:
        pop = self.matrix[:, N_USER + POP_IDX].astype("float64")
        return np.nan_to_num(pop, nan=0.0)


def stat_key(path: Path) -> tuple | None:
    """What changes when a file is rewritten (None if absent): a cheap change check."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class Clock:
    """ "now" for TTL checks: the wall clock, or the data's present (the end of the last
    materialization window) for replayed historical data such as MovieLens."""

    def __init__(self, settings: Settings):
        self.mode = settings.serving_clock
        self.path = catalog.WATERMARKS.path(settings)
        self._key: tuple | None = ()
        self._now = 0.0

    def now(self) -> float:
        if self.mode == "wall":
            return time.time()
        key = stat_key(self.path)
        if key != self._key:  # the watermarks are parsed only when a materialization moved them
            marks = catalog.Watermarks.model_validate_json(self.path.read_bytes()) if key else None
            ends = [end.timestamp() for end in marks.root.values()] if marks else []
            self._now, self._key = (max(ends) if ends else time.time()), key
        return self._now


def view_ttls(store: Any) -> tuple[np.ndarray, np.ndarray]:
    """TTL (seconds; 0 = none) of each user view and each item view, from Feast's registry."""

    def ttls(views: tuple) -> np.ndarray:
        ttl = [store.get_feature_view(name).ttl for name, _ in views]
        return np.array([t.total_seconds() if t else 0.0 for t in ttl])

    return ttls(USER_VIEWS), ttls(ITEM_VIEWS)


def _stale(ts: np.ndarray, now: float, ttl: np.ndarray | float) -> np.ndarray:
    return (ts > 0) & (ttl > 0) & (now - ts > ttl)


def assemble(
    user: np.ndarray,
    user_ts: np.ndarray,
    items: np.ndarray,
    item_ts: np.ndarray,
    now: float,
    ttls: tuple[np.ndarray, np.ndarray],
) -> FeatureBatch:
    """Stack user and item features, drop stale ones, add the on-demand features.

    ``user`` is a user row (``USER_WIDTH``) and ``user_ts`` its views' stamps; ``items``
    holds an item row per requested item and ``item_ts`` their stamps ([n, views])."""
    user = np.array(user, dtype=np.float32)
    user_ts = np.asarray(user_ts, dtype=np.float64)
    user_stale = _stale(user_ts, now, ttls[0])
    user[:N_USER][user_stale[0]] = np.nan
    user[N_USER:][user_stale[1]] = np.nan
    items = np.array(items, dtype=np.float32)
    stale = _stale(np.asarray(item_ts, dtype=np.float64), now, ttls[1])
    items[stale[:, 0], :N_ITEM] = np.nan
    items[stale[:, 1], N_ITEM:] = np.nan
    n = len(items)
    matrix = np.empty((n, len(contracts.MODEL_FEATURES)), dtype=np.float32)
    matrix[:, USER_SLICE] = user[:N_USER]
    matrix[:, ITEM_SLICE] = items[:, :N_ITEM]
    matrix[:, GENRE_MATCH] = contracts.genre_match_values(
        user[AFF_IDX], matrix[:, N_USER + GENRE_IDX]
    )
    item_factors = items[:, ITEM_ALS]
    matrix[:, ALS_SCORE] = contracts.als_score_values(user[USER_ALS], item_factors)
    content = user[USER_CONTENT], items[:, ITEM_CONTENT]
    matrix[:, CONTENT_SIM] = contracts.cosine_values(*content)
    matrix[:, RECENT_SIM] = contracts.cosine_values(user[USER_RECENT], item_factors)
    found = user_ts[0] > 0 and not user_stale[0]
    return FeatureBatch(matrix, bool(found), bool(user_stale[0]), stale[:, 0], now)


class SdkReader:
    """Feast's ``get_online_features`` on the feature service."""

    def __init__(self, store: Any, settings: Settings):
        self.store = store
        self.clock = Clock(settings)
        self.ttls = view_ttls(store)
        self._service: tuple[float, Any] = (0.0, None)

    def _feature_service(self) -> Any:
        fetched, service = self._service
        if service is None or time.monotonic() - fetched > 60:
            service = self.store.get_feature_service(contracts.FEATURE_SERVICE)
            self._service = (time.monotonic(), service)
        return service

    def read(self, user_id: int | None, item_ids: list[int]) -> FeatureBatch:
        rows = [{"user_id": user_id or 0, "item_id": i} for i in item_ids]
        frame = self.store.get_online_features(
            features=self._feature_service(), entity_rows=rows
        ).to_df(include_event_timestamps=True)

        def side(views: tuple) -> tuple[np.ndarray, np.ndarray]:
            columns = [f for _, features in views for f in features]
            values = frame[columns].to_numpy(dtype=np.float32, na_value=np.nan)
            stamps = [frame[f"{features[0]}__ts"] for _, features in views]
            ts = np.stack([_series_seconds(t) for t in stamps], axis=1)
            return values, ts

        user, user_ts = side(USER_VIEWS)
        items, item_ts = side(ITEM_VIEWS)
        return assemble(user[0], user_ts[0], items, item_ts, self.clock.now(), self.ttls)


def _series_seconds(stamps: Any) -> np.ndarray:
    """Epoch seconds of a column of Feast's ``__ts`` values (0 where there is none)."""
    return np.array([_ts_seconds(t) if t is not None and t == t else 0.0 for t in stamps])


def _tables(store: Any, views: tuple) -> list[tuple[str, dict[str, int]]]:
    """Per view, Feast's SQLite table and the column each feature fills in a row."""
    out, start = [], 0
    for name, features in views:
        out.append((f"{store.project}_{name}", {f: start + i for i, f in enumerate(features)}))
        start += len(features)
    return out


def sqlite_path(store: Any) -> Path:
    """The file of a Feast SQLite online store."""
    path = Path(store.config.online_store.path)
    return path if path.is_absolute() else Path(store.repo_path) / path


def _no_table(exc: sqlite3.OperationalError) -> bool:
    """A view never materialized has no table; any other error (a lock held past the busy
    timeout, an unreadable file) is the store being unavailable, and is raised."""
    return str(exc).startswith("no such table")


class _SqliteRows:
    """Feast's SQLite online store: one table per view, a row per (entity, feature)."""

    def __init__(self, store: Any):
        from feast.infra.key_encoding_utils import serialize_entity_key
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        version = store.config.entity_key_serialization_version
        self._key = lambda uid: serialize_entity_key(
            EntityKey(join_keys=["user_id"], entity_values=[Value(int64_val=uid)]), version
        )
        self.user_tables = _tables(store, USER_VIEWS)
        self.item_tables = _tables(store, ITEM_VIEWS)
        # One indexed read of every user view per request.
        self._user_sql = " UNION ALL ".join(
            f'SELECT {v}, feature_name, value, event_ts FROM "{t}" WHERE entity_key = ?'
            for v, (t, _) in enumerate(self.user_tables)
        )
        self._conn = sqlite3.connect(
            f"file:{sqlite_path(store)}?mode=ro",
            uri=True,
            check_same_thread=False,
            timeout=SQLITE_BUSY_TIMEOUT_S,
        )
        self.errors: tuple[type[Exception], ...] = (sqlite3.Error,)

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        from feast.infra.key_encoding_utils import deserialize_entity_key

        per_view, key_ids = [], {}
        for table, _ in self.item_tables:
            try:
                rows = self._conn.execute(
                    f'SELECT entity_key, feature_name, value, event_ts FROM "{table}"'
                ).fetchall()
            except sqlite3.OperationalError as exc:
                if not _no_table(exc):
                    raise
                rows = []
            for key, *_ in rows:
                if key not in key_ids:
                    key_ids[key] = deserialize_entity_key(key, 3).entity_values[0].int64_val
            per_view.append(rows)
        size = max(key_ids.values(), default=0) + 1
        items = np.full((size, ITEM_WIDTH), np.nan, dtype=np.float32)
        item_ts = np.zeros((size, len(ITEM_VIEWS)))
        for view, ((_, columns), rows) in enumerate(zip(self.item_tables, per_view, strict=True)):
            for key, name, blob, ts in rows:
                col = columns.get(name)
                if col is not None and blob is not None:
                    row = key_ids[key]
                    items[row, col] = decode_value(blob)
                    item_ts[row, view] = _ts_seconds(ts)
        return items, item_ts

    def user(self, user_id: int) -> tuple[np.ndarray, np.ndarray]:
        user = np.full(USER_WIDTH, np.nan, dtype=np.float32)
        user_ts = np.zeros(len(USER_VIEWS))
        key = self._key(user_id)
        try:
            rows = self._conn.execute(self._user_sql, (key,) * len(self.user_tables))
        except sqlite3.OperationalError as exc:
            if not _no_table(exc):
                raise
            rows = [  # a view never materialized: read the others
                (v, *r) for v, (t, _) in enumerate(self.user_tables) for r in self._maybe(t, key)
            ]
        stamps: dict[int, Any] = {}  # a view's rows share one stamp: parse it once
        for view, name, blob, ts in rows:
            col = self.user_tables[view][1].get(name)
            if col is not None and blob is not None:
                user[col] = decode_value(blob)
                stamps[view] = ts
        for view, ts in stamps.items():
            user_ts[view] = _ts_seconds(ts)
        return user, user_ts

    def _maybe(self, table: str, key: bytes) -> list:
        try:
            return self._conn.execute(
                f'SELECT feature_name, value, event_ts FROM "{table}" WHERE entity_key = ?', (key,)
            ).fetchall()
        except sqlite3.OperationalError as exc:
            if not _no_table(exc):
                raise
            return []


class _RedisHashes:
    """Feast's Redis online store: a hash per entity key (the serialized key, then the
    project) holding every view of that entity, a field per feature (murmur3 of
    ``view:feature``) and ``_ts:view`` per view; read with one HMGET for the user, and in
    pipelined chunks for every known item."""

    CHUNK = 2_000

    def __init__(self, store: Any, settings: Settings):
        from feast.infra.key_encoding_utils import serialize_entity_key
        from feast.infra.online_stores.helpers import _mmh3
        from feast.infra.online_stores.redis import RedisOnlineStore
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value
        from redis.backoff import NoBackoff
        from redis.exceptions import RedisError
        from redis.retry import Retry

        version = store.config.entity_key_serialization_version
        project = store.project.encode()

        def key(join_key: str, entity_id: int) -> bytes:
            entity = EntityKey(join_keys=[join_key], entity_values=[Value(int64_val=entity_id)])
            return serialize_entity_key(entity, version) + project

        def fields(views: tuple) -> list[bytes]:
            names = [_mmh3(f"{view}:{f}") for view, features in views for f in features]
            return names + [f"_ts:{view}".encode() for view, _ in views]

        self._key = key
        self._user_fields = fields(USER_VIEWS)
        self._item_fields = fields(ITEM_VIEWS)
        self._user_spans = _spans(USER_VIEWS)
        self._item_spans = _spans(ITEM_VIEWS)
        # Bound every call by the connection string's socket_timeout (infra/cluster sets
        # 0.1 s): a request must never wait on a dead store.
        self._client = RedisOnlineStore()._get_client(store.config.online_store)
        # and by one try: redis-py retries 3 times with backoff (7.7 s on a hung store); the
        # next request is the retry.
        self._client.set_retry(Retry(NoBackoff(), 0))
        self._item_ids = catalog.ITEM_IDS.path(settings)
        self.errors: tuple[type[Exception], ...] = (RedisError, OSError)

    @staticmethod
    def _row(values: list, spans: list[slice]) -> tuple[np.ndarray, np.ndarray]:
        """A row and its views' stamps from one HMGET (features, then a stamp per view)."""
        width = spans[-1].stop
        row = np.full(width, np.nan, dtype=np.float32)
        for col, blob in enumerate(values[:width]):
            if blob is not None:
                row[col] = decode_value(blob)
        stamps = values[width:]
        ts = np.zeros(len(spans))
        for view, (span, blob) in enumerate(zip(spans, stamps, strict=True)):
            # a view's stamp counts only with its values (Feast keeps both or neither)
            if blob is not None:
                ts[view] = _proto_ts_seconds(blob)
            else:
                row[span] = np.nan
        return row, ts

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        import pyarrow.parquet as pq

        known = pq.read_table(self._item_ids, columns=["internal_id"])["internal_id"]
        size = (int(max(known.to_pylist(), default=-1)) + 1) or 1
        items = np.full((size, ITEM_WIDTH), np.nan, dtype=np.float32)
        item_ts = np.zeros((size, len(ITEM_VIEWS)))
        for start in range(0, size, self.CHUNK):
            ids = range(start, min(start + self.CHUNK, size))
            pipe = self._client.pipeline(transaction=False)
            for item_id in ids:
                pipe.hmget(self._key("item_id", item_id), self._item_fields)
            for item_id, values in zip(ids, pipe.execute(), strict=True):
                items[item_id], item_ts[item_id] = self._row(values, self._item_spans)
        return items, item_ts

    def user(self, user_id: int) -> tuple[np.ndarray, np.ndarray]:
        values = self._client.hmget(self._key("user_id", user_id), self._user_fields)
        return self._row(values, self._user_spans)


def _spans(views: tuple) -> list[slice]:
    out, start = [], 0
    for _, features in views:
        out.append(slice(start, start + len(features)))
        start += len(features)
    return out


def decode_value(blob: bytes) -> float:
    """A feature value as Feast stores it online (a serialized ``ValueProto``)."""
    if len(blob) == 5 and blob[0] == 0x35:  # ValueProto float_val: tag 6, fixed32
        return _FLOAT32.unpack_from(blob, 1)[0]
    from feast.protos.feast.types.Value_pb2 import Value

    value = Value()
    value.ParseFromString(blob)
    kind = value.WhichOneof("val")
    return float(getattr(value, kind)) if kind else float("nan")


def _proto_ts_seconds(blob: bytes) -> float:
    from google.protobuf.timestamp_pb2 import Timestamp

    ts = Timestamp()
    ts.ParseFromString(blob)
    return ts.seconds + ts.nanos / 1e9


class FastReader:
    """Item features in memory, reloaded when a materialization finishes, and one read of
    the user's row per request: an indexed SELECT on Feast's SQLite store, or an HMGET on
    its Redis store, whichever ``feature_store.yaml`` configures."""

    def __init__(self, store: Any, settings: Settings):
        kind = store.config.online_store.type
        if kind == "sqlite":
            self.rows: _SqliteRows | _RedisHashes = _SqliteRows(store)
        elif kind == "redis":
            self.rows = _RedisHashes(store, settings)
        else:
            raise ValueError(f"the fast path reads SQLite or Redis, not a {kind!r} online store")
        self.clock = Clock(settings)
        self.ttls = view_ttls(store)
        self.version_file = catalog.WATERMARKS.path(settings)
        self._version: tuple | None = ()
        self._down = False
        self.items = np.full((1, ITEM_WIDTH), np.nan, dtype=np.float32)
        self.item_ts = np.zeros((1, len(ITEM_VIEWS)))
        self.refresh()

    def refresh(self) -> bool:
        """Reload the item table if a materialization finished since the last load. With
        the store down, the table in memory stays and the next request tries again."""
        version = stat_key(self.version_file)
        if version == self._version:
            return False
        try:
            items, item_ts = self.rows.items()
        except self.rows.errors as exc:
            log.warning("online store unavailable, keeping the item features in memory: %s", exc)
            return False
        self.items, self.item_ts, self._version = items, item_ts, version  # swapped together
        return True

    def read(self, user_id: int | None, item_ids: list[int]) -> FeatureBatch:
        self.refresh()
        user, unavailable = np.full(USER_WIDTH, np.nan, dtype=np.float32), False
        user_ts = np.zeros(len(USER_VIEWS))
        if user_id is not None:
            try:
                user, user_ts = self.rows.user(user_id)
            except self.rows.errors as exc:  # popularity from memory, flagged; never a 500
                unavailable = True
                if not self._down:
                    log.warning("online store unavailable, serving popularity: %s", exc)
            if self._down and not unavailable:
                log.warning("online store back")
            self._down = unavailable
        items, item_ts = self.items, self.item_ts
        idx = np.asarray(item_ids, dtype=np.int64)
        inside = idx < len(items)
        rows = np.full((len(idx), ITEM_WIDTH), np.nan, dtype=np.float32)
        rows[inside] = items[idx[inside]]
        ts = np.zeros((len(idx), len(ITEM_VIEWS)))
        ts[inside] = item_ts[idx[inside]]
        batch = assemble(user, user_ts, rows, ts, self.clock.now(), self.ttls)
        batch.store_unavailable = unavailable
        return batch


def _ts_seconds(ts: Any) -> float:
    if isinstance(ts, int | float):
        return float(ts)
    from datetime import datetime

    return datetime.fromisoformat(str(ts)).timestamp()


class ServedLog:
    """A sample of the feature rows actually served, for the training-serving skew check.

    JSON lines, one file per worker process, rotated by size (``RotatingFileHandler``).
    Each sampled request logs up to ``rows_per_request`` rows with the keys, the feature
    time the TTLs were checked at, and every model input as served.
    """

    def __init__(self, settings: Settings, rows_per_request: int = 5):
        import logging
        import random
        from logging.handlers import RotatingFileHandler

        self.rate = settings.serving_log_sample_rate
        self.rows = rows_per_request
        self._random = random.Random()
        path = settings.serving_log_dir / f"served-{os.getpid()}.jsonl"
        # A logger per file, not per process: a process that serves two data directories
        # (the test suite does) must not write one's rows into the other's log.
        self.logger = logging.getLogger(f"content_ranker.served.{hash(str(path)):x}")
        self.logger.propagate = False
        self.logger.setLevel(logging.INFO)
        if self.rate > 0 and not self.logger.handlers:
            settings.serving_log_dir.mkdir(parents=True, exist_ok=True)
            handler = RotatingFileHandler(
                path,
                maxBytes=settings.serving_log_max_mb * 1_000_000,
                backupCount=settings.serving_log_backups,
            )
            handler.setFormatter(logging.Formatter("%(message)s"))
            self.logger.addHandler(handler)

    def maybe_log(self, user_id: int, item_ids: list[int], batch: FeatureBatch, model: str) -> None:
        if self.rate <= 0 or self._random.random() >= self.rate:
            return
        served_at = time.time()
        for row in range(min(self.rows, len(item_ids))):
            values = batch.matrix[row].tolist()
            record = {
                "user_id": user_id,
                "item_id": item_ids[row],
                "feature_time": batch.now,
                "served_at": served_at,
                "model_version": model,
                **{
                    f: (None if v != v else v)  # NaN -> null
                    for f, v in zip(contracts.MODEL_FEATURES, values, strict=True)
                },
            }
            self.logger.info(json.dumps(record))
