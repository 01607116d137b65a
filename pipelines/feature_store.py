"""Feast: register the repo in features/, materialize, and read features back.

Calls are in-process (``store.apply``) rather than through the ``feast`` CLI:
the CLI costs ~7-12 s of imports per call on this machine.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from pipelines import catalog, contracts
from pipelines.config import PROJECT_ROOT, Settings

if TYPE_CHECKING:
    from feast import FeatureStore
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)


def open_store(settings: Settings) -> FeatureStore:
    """A FeatureStore configured by the environment's ``feature_store.yaml`` (the repo's
    own, ``features/feature_store.yaml``, unless ``settings.feature_store_yaml`` names one).

    Its repo path is the data directory: the repo's offline sources are relative to it,
    and Feast's file store resolves them there, as :func:`source_path` does for Spark.
    """
    from feast import FeatureStore

    settings.export_env()
    settings.feast_dir.mkdir(parents=True, exist_ok=True)
    config = settings.feature_store_yaml or settings.feature_repo / "feature_store.yaml"
    if not config.is_absolute():
        config = PROJECT_ROOT / config  # as infra/<env>/settings.env names it
    return FeatureStore(repo_path=str(settings.data_dir), fs_yaml_file=config)


def source_path(store: FeatureStore, source: Any) -> str:
    """Where a file source's data is: its path (relative to the data directory, see
    ``features/repo.py``) resolved as Feast's file store resolves it, against the store's
    repo path. An absolute path or a URI stays as it is."""
    from feast import FileSource

    return FileSource.get_uri_for_file_path(store.config.repo_path, source.path)


def repo_objects() -> list:
    """Every object the repo in features/ defines, as ``feast apply`` would find them."""
    from features import repo

    return [
        repo.user,
        repo.item,
        repo.user_activity_source,
        repo.item_stats_source,
        repo.user_factors_source,
        repo.item_factors_source,
        repo.user_activity_fv,
        repo.item_stats_fv,
        repo.user_factors_fv,
        repo.item_factors_fv,
        repo.user_item_match_odfv,
        repo.user_item_als_odfv,
        repo.user_item_content_odfv,
        repo.user_item_recent_odfv,
        repo.ranker_v1,
    ]


def apply(settings: Settings) -> list[str]:
    """Register the repo's entities, views and services. Returns the names applied."""
    store = open_store(settings)
    objects = repo_objects()
    store.apply(objects)
    return [o.name for o in objects]


def materialize(settings: Settings, start: datetime, end: datetime) -> dict[str, Any]:
    """Load the latest feature row per entity with timestamp in [start, end] online.

    The watermark is kept by us as well as by Feast, because ``feast apply`` can
    reset Feast's own (feast#2905); a re-run of the same window is a no-op upsert.
    """
    store = open_store(settings)
    recorded = catalog.WATERMARKS.load_or_none(settings)
    marks = recorded.root if recorded else {}
    views = list(contracts.ONLINE_VIEWS)
    known = [marks[v].astimezone(UTC) for v in views if v in marks]
    if known and min(known) > end:
        # A backfill of an earlier date: the online store already holds newer rows,
        # and loading this window would roll them back.
        log.info("online store is at %s, past %s: nothing to load", min(known), end)
        return {"start": None, "end": end.isoformat(), "skipped": "online store is newer"}
    # Resume from the oldest watermark; a re-run of a loaded window reloads it whole.
    view_start = min(known) if known and min(known) < end else start
    rows = {v: load_online(settings, store, v, view_start, end) for v in views}
    # Written only after every view is loaded, and atomically: a task killed before
    # this line leaves the old watermark, so its retry reloads the whole window.
    catalog.WATERMARKS.save(settings, {**marks, **{v: end for v in views}})
    return {"start": view_start.isoformat(), "end": end.isoformat(), "rows": rows}


def latest_rows(
    snapshots: DataFrame, key: str, timestamp_field: str, start: datetime, end: datetime
) -> DataFrame:
    """The newest snapshot per ``key`` stamped in [start, end] (both ends included, as in
    Feast's file store): what ``FeatureStore.materialize`` loads, computed in Spark."""
    from pyspark.sql import functions as F

    ts = F.col(timestamp_field)
    window = snapshots.where(ts.between(F.lit(start), F.lit(end)))
    rest = [c for c in snapshots.columns if c != key]
    newest = window.groupBy(key).agg(F.max_by(F.struct(*rest), ts).alias("_row"))
    return newest.select(key, "_row.*")


def batch_rows(settings: Settings, width: int) -> int:
    """Rows per online write batch for a view of ``width`` features: the same number of
    values (each a protobuf object in Feast's write path) whatever the width."""
    return max(1, settings.online_write_batch_values // width)


def load_online(
    settings: Settings, store: FeatureStore, view_name: str, start: datetime, end: datetime
) -> int:
    """Materialize one feature view from Spark: :func:`latest_rows` is staged as parquet
    by Spark, then streamed to Feast's online store (``write_to_online_store``, whatever
    store the environment configures) in batches of ``online_write_batch_values`` values
    (rows times the view's features).

    Feast's own ``materialize`` on the file store loads the whole offline table into
    the driver in pandas; here the driver holds one batch. The interval is recorded in
    Feast's registry as ``materialize`` records it. Returns the rows written.
    """
    import pyarrow.dataset as ds

    from pipelines.spark import get_spark

    view = store.get_feature_view(view_name)
    key = view.entity_columns[0].name
    ts = view.batch_source.timestamp_field
    if not Path(source_path(store, view.batch_source)).exists():
        log.warning("%s: no offline table yet, nothing to load", view_name)
        return 0
    spark = get_spark(settings)
    staged = catalog.ONLINE_STAGING.path(settings, view=view_name)
    columns = [key, ts, *(f.name for f in view.features)]
    snapshots = spark.read.parquet(source_path(store, view.batch_source)).select(*columns)
    latest_rows(snapshots, key, ts, start, end).write.mode("overwrite").parquet(str(staged))
    written = 0
    rows = batch_rows(settings, len(view.features))
    for batch in ds.dataset(staged, format="parquet").to_batches(batch_size=rows):
        if batch.num_rows:
            store.write_to_online_store(view_name, df=batch.to_pandas())
            written += batch.num_rows
    store.registry.apply_materialization(view, store.project, start, end)
    log.info("%s: %d rows online for [%s, %s]", view_name, written, start, end)
    return written


@dataclass(frozen=True)
class ViewSpec:
    """What a point-in-time join needs of one Feast feature view, read from the registry."""

    name: str
    join_key: str
    path: str
    timestamp_field: str
    ttl_seconds: int | None  # None: no TTL (Feast's ttl of 0)
    features: tuple[str, ...]


def service_views(store: FeatureStore, service_name: str) -> tuple[list[ViewSpec], list[Any]]:
    """The batch views and the on-demand views of a feature service, as Feast registered them."""
    service = store.get_feature_service(service_name)
    on_demand_names = {v.name for v in store.list_on_demand_feature_views()}
    views, on_demand = [], []
    for projection in service.feature_view_projections:
        if projection.name in on_demand_names:
            on_demand.append(store.get_on_demand_feature_view(projection.name))
            continue
        view = store.get_feature_view(projection.name)
        ttl = int(view.ttl.total_seconds()) if view.ttl else 0
        views.append(
            ViewSpec(
                name=view.name,
                join_key=view.entity_columns[0].name,
                path=source_path(store, view.batch_source),
                timestamp_field=view.batch_source.timestamp_field,
                ttl_seconds=ttl or None,
                features=tuple(f.name for f in projection.features),
            )
        )
    return views, on_demand


def as_of_rows(
    entities: DataFrame,
    snapshots: DataFrame,
    key: str,
    features: Sequence[str],
    ttl_seconds: int | None,
) -> DataFrame:
    """Per distinct (``key``, ``event_timestamp``) of ``entities``, the features of the
    newest snapshot of the key at or before that time and no older than the TTL (nulls
    where there is none), to join back onto the entity rows.

    ``snapshots`` has ``key``, ``_fts`` (the snapshot time) and ``features``. A sort-merge
    by key and time: the distinct (key, time) pairs of the entity rows and the snapshots
    are sorted together per key, and each pair takes the last snapshot at or before it
    (a snapshot stamped at the same instant counts, as in Feast). O(n log n) in pairs plus
    snapshots, where Feast's stores join every entity row to every snapshot in the TTL.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    packed = snapshots.select(
        key,
        F.col("_fts").alias("_t"),
        F.lit(0).alias("_kind"),
        F.struct("_fts", *features).alias("_s"),
    )
    wanted = entities.select(key, F.col("event_timestamp").alias("_t")).distinct()
    stacked = packed.unionByName(
        wanted.select(
            key,
            "_t",
            F.lit(1).alias("_kind"),
            F.lit(None).cast(packed.schema["_s"].dataType).alias("_s"),
        )
    )
    upto = (
        Window.partitionBy(key)
        .orderBy("_t", "_kind")
        .rowsBetween(Window.unboundedPreceding, Window.currentRow)
    )
    latest = stacked.withColumn("_s", F.last("_s", ignorenulls=True).over(upto)).where("_kind = 1")
    fresh = F.col("_s._fts").isNotNull()
    if ttl_seconds:
        fresh = F.col("_s._fts") >= F.col("_t") - F.make_dt_interval(secs=F.lit(ttl_seconds))
    return latest.select(
        key,
        F.col("_t").alias("event_timestamp"),
        *[F.when(fresh, F.col(f"_s.{f}")).alias(f) for f in features],
    )


def _on_demand(frame: DataFrame, odfvs: list[Any]) -> DataFrame:
    """Add the on-demand views' features with the transformations Feast itself runs, all
    in one pass over the rows (a Python worker round trip per view cost as much again)."""
    from feast import types
    from pyspark.sql.types import DoubleType, FloatType, LongType, StructField, StructType

    spark_type = {types.Float64: DoubleType(), types.Float32: FloatType(), types.Int64: LongType()}
    views = [
        (odfv.feature_transformation.udf, [f.name for f in odfv.features], odfv.features)
        for odfv in odfvs
    ]
    fields = [StructField(f.name, spark_type[f.dtype], True) for *_, fs in views for f in fs]
    schema = StructType([*frame.schema.fields, *fields])

    def add(batches):
        for batch in batches:
            for udf, names, _ in views:
                out = udf(batch)
                batch = batch.assign(**{n: out[n] for n in names})
            yield batch

    return frame.mapInPandas(add, schema)


def historical_features(spark: SparkSession, settings: Settings, entities: DataFrame) -> DataFrame:
    """Point-in-time join of the ranker's feature service onto ``entities``, in Spark.

    ``entities`` needs the join keys (``user_id``, ``item_id``) and ``event_timestamp``;
    every other column passes through. The views, their sources, TTLs and the on-demand
    transformation come from Feast's registry; the join is :func:`as_of_rows` per view,
    and the result stays a Spark DataFrame.
    """
    from pyspark.sql import functions as F

    views, on_demand = service_views(open_store(settings), contracts.FEATURE_SERVICE)
    out = entities
    for view in views:
        if not Path(view.path).exists():  # no snapshot yet (no factors fit): all missing
            log.warning("%s: no offline table at %s; its features are null", view.name, view.path)
            out = out.select("*", *[F.lit(None).cast("float").alias(f) for f in view.features])
            continue
        snapshots = spark.read.parquet(view.path).select(
            F.col(view.join_key).cast("long").alias(view.join_key),
            F.col(view.timestamp_field).alias("_fts"),
            *view.features,
        )
        # Each view's rows come from the entity rows themselves, not from the previous
        # view's join: chained, every join would read its input twice (its keys, then the
        # join back), and the plan Spark analyses before every action doubled per view
        # (16 copies of the entity rows' plan for 4 views: seconds of planning each time).
        found = as_of_rows(entities, snapshots, view.join_key, view.features, view.ttl_seconds)
        out = out.join(found, [view.join_key, "event_timestamp"], "left")
    return _on_demand(out, on_demand) if on_demand else out


def historical_features_pandas(settings: Settings, entity_df: pd.DataFrame) -> pd.DataFrame:
    """:func:`historical_features` for a small pandas frame (the served-row skew check);
    rows keep their order."""
    from pipelines.spark import get_spark

    spark = get_spark(settings)
    keyed = entity_df.assign(_row=range(len(entity_df)))
    keyed["event_timestamp"] = pd.to_datetime(keyed["event_timestamp"], utc=True)
    joined = historical_features(spark, settings, spark.createDataFrame(keyed)).toPandas()
    joined = joined.sort_values("_row").drop(columns="_row").reset_index(drop=True)
    return joined.assign(event_timestamp=entity_df["event_timestamp"].to_numpy())


def online_features(
    settings: Settings, user_id: int, item_ids: list[int], store: FeatureStore | None = None
) -> pd.DataFrame:
    """The ranker's features for one user and many items, read from the online store."""
    store = store or open_store(settings)
    service = store.get_feature_service(contracts.FEATURE_SERVICE)
    rows = [{"user_id": user_id, "item_id": i} for i in item_ids]
    return store.get_online_features(features=service, entity_rows=rows).to_df()
