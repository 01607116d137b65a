"""Feast: register the repo in features/, materialize, and read features back.

Calls are in-process (``store.apply``) rather than through the ``feast`` CLI:
the CLI costs ~7-12 s of imports per call on this machine.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from pipelines import contracts
from pipelines.config import Settings
from pipelines.runs import write_json

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)


def open_store(settings: Settings) -> FeatureStore:
    """A FeatureStore on the repo in ``settings.feature_repo``."""
    from feast import FeatureStore

    settings.export_env()
    settings.feast_dir.mkdir(parents=True, exist_ok=True)
    return FeatureStore(repo_path=str(settings.feature_repo))


def repo_objects() -> list:
    """Every object the repo in features/ defines, as ``feast apply`` would find them."""
    from features.entities import item, user
    from features.feature_services import ranker_v1
    from features.item import item_stats_fv
    from features.on_demand import user_item_match_odfv
    from features.user import user_activity_fv

    return [user, item, user_activity_fv, item_stats_fv, user_item_match_odfv, ranker_v1]


def apply(settings: Settings) -> list[str]:
    """Register the repo's entities, views and services. Returns the names applied."""
    store = open_store(settings)
    objects = repo_objects()
    store.apply(objects)
    return [o.name for o in objects]


def _watermark_file(settings: Settings) -> Path:
    return settings.feast_dir / "watermarks.json"


def materialize(settings: Settings, start: datetime, end: datetime) -> dict[str, str | None]:
    """Load the latest feature row per entity with timestamp in [start, end] online.

    The watermark is kept by us as well as by Feast, because ``feast apply`` can
    reset Feast's own (feast#2905); a re-run of the same window is a no-op upsert.
    """
    store = open_store(settings)
    wm_file = _watermark_file(settings)
    marks: dict[str, str] = json.loads(wm_file.read_text()) if wm_file.exists() else {}
    views = [contracts.USER_VIEW, contracts.ITEM_VIEW]
    known = [datetime.fromisoformat(marks[v]) for v in views if v in marks]
    if known and min(known) > end:
        # A backfill of an earlier date: the online store already holds newer rows,
        # and loading this window would roll them back.
        log.info("online store is at %s, past %s: nothing to load", min(known), end)
        return {"start": None, "end": end.isoformat(), "skipped": "online store is newer"}
    # Resume from the oldest watermark; a re-run of a loaded window reloads it whole.
    view_start = min(known) if known and min(known) < end else start
    store.materialize(start_date=view_start, end_date=end, feature_views=views)
    # Written only after every view is loaded, and atomically: a task killed before
    # this line leaves the old watermark, so its retry reloads the whole window.
    write_json(wm_file, {**marks, **{v: end.isoformat() for v in views}})
    return {"start": view_start.isoformat(), "end": end.isoformat()}


def historical_features(
    settings: Settings, entity_df: pd.DataFrame, chunk_rows: int | None = None
) -> pd.DataFrame:
    """Point-in-time join of the ranker's feature service onto ``entity_df``.

    ``entity_df`` needs ``user_id``, ``item_id`` (internal ints) and
    ``event_timestamp``; every other column passes through, and rows keep their order.
    The file store joins every entity row to every snapshot of its entity before it
    filters by time, so the frame is retrieved in chunks to bound memory.
    """
    from tqdm.auto import tqdm

    store = open_store(settings)
    service = store.get_feature_service(contracts.FEATURE_SERVICE)
    chunk_rows = chunk_rows or settings.retrieval_chunk_rows
    # Feast's file (Dask) store de-duplicates on the join keys seen *so far* plus the
    # timestamp, so with a user view joined before an item view every row of a
    # (user, timestamp) but one is dropped. A distinct sub-second offset per row keeps
    # them apart; feature rows are stamped at midnight, so the offset changes no match.
    offset = entity_df.groupby(["user_id", "event_timestamp"]).cumcount()
    if len(offset) and int(offset.max()) >= 1000:
        raise ValueError("at most 1000 candidates per (user, timestamp) in one retrieval")
    keyed = entity_df.assign(
        _row=range(len(entity_df)),
        _ts=entity_df["event_timestamp"],
        event_timestamp=entity_df["event_timestamp"] + pd.to_timedelta(offset, unit="ms"),
    )
    parts = []
    starts = range(0, len(keyed), chunk_rows)
    for start in tqdm(
        starts, desc="feast point-in-time join", unit="chunk", disable=len(starts) < 2
    ):
        chunk = keyed.iloc[start : start + chunk_rows]
        parts.append(store.get_historical_features(entity_df=chunk, features=service).to_df())
    joined = pd.concat(parts, ignore_index=True) if parts else keyed.iloc[:0]
    missing = keyed[~keyed["_row"].isin(joined["_row"])]
    if len(missing):
        joined = pd.concat(
            [joined, _rows_without_fresh_features(store, missing)], ignore_index=True
        )
    joined = joined.sort_values("_row").drop(columns=["_row", "event_timestamp"])
    return joined.rename(columns={"_ts": "event_timestamp"}).reset_index(drop=True)


def _rows_without_fresh_features(store: FeatureStore, missing: pd.DataFrame) -> pd.DataFrame:
    """The file store drops an entity row whose entity has feature rows but none inside
    ``[t - ttl, t]`` (a brand-new item, a user gone quiet), where a point-in-time join must
    return nulls. Such rows are joined view by view and the on-demand feature computed
    with the same function Feast runs, so no training or holdout row is lost."""
    out = missing.copy()
    for view, key, features in (
        (contracts.USER_VIEW, "user_id", contracts.USER_FEATURES),
        (contracts.ITEM_VIEW, "item_id", contracts.ITEM_FEATURES),
    ):
        refs = [f"{view}:{f}" for f in features]
        got = store.get_historical_features(
            entity_df=missing[["_row", key, "event_timestamp"]], features=refs
        ).to_df()
        out = out.merge(got[["_row", *features]], on="_row", how="left")
    return out.assign(**contracts.genre_match(out))


def online_features(
    settings: Settings, user_id: int, item_ids: list[int], store: FeatureStore | None = None
) -> pd.DataFrame:
    """The ranker's features for one user and many items, read from the online store."""
    store = store or open_store(settings)
    service = store.get_feature_service(contracts.FEATURE_SERVICE)
    rows = [{"user_id": user_id, "item_id": i} for i in item_ids]
    return store.get_online_features(features=service, entity_rows=rows).to_df()
