"""Ingest: copy the day's landed partition into the lake (and all history on bootstrap)."""

from __future__ import annotations

import math
import shutil
from datetime import date
from typing import TYPE_CHECKING

import pandas as pd

from pipelines import catalog
from pipelines.config import Settings

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

LAKE_SPLIT_BYTES = 64 << 20  # parquet bytes of the lake per Spark read task


def landed_days(settings: Settings) -> list[date]:
    return catalog.LANDING.dates(settings)


def lake_days(settings: Settings) -> list[date]:
    return catalog.LAKE.dates(settings)


def days_to_ingest(
    logical_date: date, landed: list[date], in_lake: list[date], backfill_from: date | None
) -> list[date]:
    """The logical date's partition; on bootstrap (empty lake) or backfill, the earlier ones too."""
    if backfill_from is not None:
        return [d for d in landed if backfill_from <= d <= logical_date]
    if not in_lake:
        return [d for d in landed if d <= logical_date]
    return [d for d in landed if d == logical_date]


def ingest(logical_date: date, settings: Settings, backfill_from: date | None = None) -> list[date]:
    """Copy partitions from landing into the raw lake, overwriting (a re-run never duplicates)."""
    days = days_to_ingest(logical_date, landed_days(settings), lake_days(settings), backfill_from)
    for day in days:
        with catalog.atomic_path(catalog.LAKE.path(settings, date=day)) as target:
            shutil.copyfile(catalog.LANDING.path(settings, date=day), target)
    return days


def day_batches(settings: Settings, days: list[date], max_rows: int) -> list[list[date]]:
    """``days`` (sorted) cut into runs of consecutive lake partitions of at most ``max_rows``
    rows in all, counted from the parquet footers; a day past the limit alone is a batch.

    Whole days, so a check that compares rows within a day (duplicates, event date against
    partition) sees the same rows as on the whole batch.
    """
    import pyarrow.parquet as pq

    batches: list[list[date]] = []
    rows = 0
    for day in sorted(days):
        n = pq.read_metadata(catalog.LAKE.path(settings, date=day)).num_rows
        if not batches or rows + n > max_rows:
            batches.append([])
            rows = 0
        batches[-1].append(day)
        rows += n
    return batches


def read_partitions(settings: Settings, days: list[date]) -> pd.DataFrame:
    """The raw rows of ``days``, with the partition each row came from."""
    frames = []
    for day in days:
        part = pd.read_parquet(catalog.LAKE.path(settings, date=day))
        frames.append(part.assign(partition_date=day.isoformat()))
    if not frames:
        return pd.DataFrame(columns=["user_id", "item_id", "rating", "timestamp", "partition_date"])
    return pd.concat(frames, ignore_index=True)


def lake_frame(
    spark: SparkSession, settings: Settings, until: date, since: date | None = None
) -> DataFrame:
    """Every validated interaction up to and including ``until`` (and from ``since`` on, if
    given), read by Spark from the date-partitioned lake (the driver holds only the list
    of partitions)."""
    from pyspark.sql import functions as F

    days = [d for d in lake_days(settings) if d <= until and (since is None or d >= since)]
    files = [catalog.LAKE.path(settings, date=d) for d in days]
    if not files:
        lake = catalog.LAKE.prefix(settings)
        raise FileNotFoundError(f"no validated partition up to {until} in {lake}")
    # Spark packs about 32 small daily files per read task, so ML-1M's thousand days
    # make 29 tasks of ~1k rows on every scan; a task per LAKE_SPLIT_BYTES (at least one
    # per core) scans the same rows with a tenth of the tasks.
    size = sum(f.stat().st_size for f in files)
    splits = max(spark.sparkContext.defaultParallelism, math.ceil(size / LAKE_SPLIT_BYTES))
    return (
        spark.read.parquet(*map(str, files))
        .select(
            F.col("user_id").cast("string"),
            F.col("item_id").cast("string"),
            F.col("rating").cast("double"),
            F.col("timestamp").cast("long"),
        )
        .coalesce(splits)
    )


def lake_events(spark: SparkSession, settings: Settings, until: date) -> DataFrame:
    """:func:`lake_frame` keyed by internal ids (user_id, item_id, rating, timestamp), through
    the id maps that ``build_features`` keeps up to date."""
    from pipelines import ids

    return ids.internal_events(
        spark,
        lake_frame(spark, settings, until=until),
        ids.read_mapping(catalog.USER_IDS.path(settings)),
        ids.read_mapping(catalog.ITEM_IDS.path(settings)),
    )
