"""User and item features with Spark, written as Feast offline sources.

A feature row stamped at day ``s`` (00:00 UTC) summarises only events from days
strictly before ``s``, so a point-in-time join at any moment of day ``d`` sees
nothing of day ``d`` or later. Rows are emitted only on days when a value can
change (the day after activity, and when activity leaves each window), which
keeps the tables small without making any value stale.
"""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING

import pandas as pd

from pipelines import contracts
from pipelines.contracts import GENRE_SLOTS, WINDOWS_DAYS

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

EPOCH = date(1970, 1, 1)


def day_number(day: date) -> int:
    return (day - EPOCH).days


def item_attributes(
    items: pd.DataFrame | None, item_ids: pd.DataFrame, genres: list[str]
) -> pd.DataFrame:
    """Per internal item id: release year and one 0/1 column per genre slot."""
    out = item_ids[["external_id", "internal_id"]].rename(columns={"internal_id": "item_id"})
    if items is not None:
        meta = items.rename(columns={"item_id": "external_id"})
        keep = [c for c in ("external_id", "genres", "year") if c in meta]
        out = out.merge(meta[keep], on="external_id", how="left")
    split = out["genres"].fillna("").str.split("|") if "genres" in out else None
    for slot in GENRE_SLOTS:
        out[f"item_genre_{slot}"] = 0.0
    for slot, genre in zip(GENRE_SLOTS, genres if split is not None else [], strict=False):
        out[f"item_genre_{slot}"] = split.apply(lambda gs, g=genre: float(g in gs))
    out["year"] = pd.to_numeric(out["year"], errors="coerce") if "year" in out else float("nan")
    cols = ["item_id", "year", *(f"item_genre_{s}" for s in GENRE_SLOTS)]
    return out[cols].astype({"item_id": "int64"})


def _snapshot_days(spark_daily: DataFrame, key: str, last_day: int) -> DataFrame:
    """Days on which an entity's features can change: d+1 and d+1+w for each active day d."""
    from pyspark.sql import functions as F

    offsets = [1, *(1 + w for w in WINDOWS_DAYS)]
    snaps = spark_daily.select(
        key, F.explode(F.array(*[F.col("day") + o for o in offsets])).alias("day")
    )
    return snaps.where(F.col("day") <= last_day + 1).distinct()


def _trailing(daily: DataFrame, snaps: DataFrame, key: str, sums: list[str]) -> DataFrame:
    """For each snapshot day s: sums over days [s-w, s) for each window, and over all days < s."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    zeros = [F.lit(0.0).alias(c) for c in sums]
    rows = daily.select(key, "day", *sums, F.lit(False).alias("is_snap")).unionByName(
        snaps.select(key, "day", *zeros, F.lit(True).alias("is_snap"))
    )
    by_key = Window.partitionBy(key).orderBy("day")
    past = by_key.rangeBetween(Window.unboundedPreceding, -1)
    cols = [F.sum("cnt").over(by_key.rangeBetween(-w, -1)).alias(f"cnt_{w}d") for w in WINDOWS_DAYS]
    cols += [F.sum(c).over(past).alias(f"{c}_all") for c in sums]
    cols.append(F.max(F.when(F.col("cnt") > 0, F.col("day"))).over(past).alias("last_day"))
    return rows.select(key, "day", "is_snap", *cols).where("is_snap").drop("is_snap")


def _stamp(frame: DataFrame) -> DataFrame:
    from pyspark.sql import functions as F

    return frame.withColumn(
        "event_timestamp", F.timestamp_seconds(F.col("day").cast("long") * 86_400)
    )


def compute_features(
    spark: SparkSession, events: DataFrame, items: pd.DataFrame, last_day: date
) -> tuple[DataFrame, DataFrame]:
    """User and item feature snapshots from ``events`` (user_id, item_id: int; rating; timestamp).

    ``items`` comes from :func:`item_attributes`. Snapshots go up to ``last_day + 1``:
    the row that serving reads the day after ``last_day``.
    """
    from pyspark.sql import functions as F

    attrs = spark.createDataFrame(items)
    genre_cols = [f"item_genre_{s}" for s in GENRE_SLOTS]
    ev = events.withColumn("day", F.floor(F.col("timestamp") / 86_400).cast("int")).join(
        attrs, "item_id", "left"
    )
    last = day_number(last_day)
    ev = ev.where(F.col("day") <= last)

    # Users: counts, rating sum and genre counts per active day, then trailing sums.
    user_daily = ev.groupBy("user_id", "day").agg(
        F.count("*").cast("double").alias("cnt"),
        F.sum("rating").alias("rating_sum"),
        *[F.sum(F.coalesce(F.col(g), F.lit(0.0))).alias(g) for g in genre_cols],
    )
    u = _trailing(
        user_daily,
        _snapshot_days(user_daily, "user_id", last),
        "user_id",
        ["cnt", "rating_sum", *genre_cols],
    )
    genre_total = sum((F.col(f"{g}_all") for g in genre_cols), F.lit(0.0))
    users = _stamp(
        u.select(
            "user_id",
            "day",
            *[
                F.coalesce(F.col(f"cnt_{w}d"), F.lit(0.0)).alias(f"user_cnt_{w}d")
                for w in WINDOWS_DAYS
            ],
            F.col("cnt_all").alias("user_cnt_all"),
            (F.col("rating_sum_all") / F.col("cnt_all")).alias("user_mean_rating"),
            (F.col("day") - F.col("last_day")).cast("double").alias("user_days_since_last"),
            *[
                F.when(genre_total > 0, F.col(f"{g}_all") / genre_total)
                .otherwise(0.0)
                .alias(f"user_aff_{s}")
                for g, s in zip(genre_cols, GENRE_SLOTS, strict=True)
            ],
        )
    )

    # Items: popularity per window, mean rating, age, genres.
    item_daily = ev.groupBy("item_id", "day").agg(
        F.count("*").cast("double").alias("cnt"), F.sum("rating").alias("rating_sum")
    )
    i = _trailing(
        item_daily, _snapshot_days(item_daily, "item_id", last), "item_id", ["cnt", "rating_sum"]
    )
    snapshot_year = F.year(F.timestamp_seconds(F.col("day").cast("long") * 86_400))
    items_out = _stamp(
        i.join(attrs, "item_id", "left").select(
            "item_id",
            "day",
            *[
                F.coalesce(F.col(f"cnt_{w}d"), F.lit(0.0)).alias(f"item_pop_{w}d")
                for w in WINDOWS_DAYS
            ],
            F.col("cnt_all").alias("item_pop_all"),
            (F.col("rating_sum_all") / F.col("cnt_all")).alias("item_mean_rating"),
            (snapshot_year - F.col("year")).cast("double").alias("item_age_years"),
            *[F.coalesce(F.col(g), F.lit(0.0)).alias(g) for g in genre_cols],
        )
    )
    return _finish(users, "user_id", contracts.USER_FEATURES), _finish(
        items_out, "item_id", contracts.ITEM_FEATURES
    )


def _finish(frame: DataFrame, key: str, features: list[str]) -> DataFrame:
    from pyspark.sql import functions as F

    return frame.select(
        F.col(key).cast("long").alias(key),
        "event_timestamp",
        *[F.col(f).cast("float").alias(f) for f in features],
    )


def write_offline(frame: DataFrame, path: str) -> int:
    """Overwrite one Feast offline source (a re-run of the same date writes the same rows)."""
    ordered = frame.repartition(1).sortWithinPartitions(*frame.columns[:2])
    ordered.write.mode("overwrite").parquet(path)
    return ordered.sparkSession.read.parquet(path).count()  # from the footers, no recompute


def build_features(logical_date: date, settings) -> dict:
    """Stage: recompute both feature tables from the whole validated lake.

    The tables hold every snapshot the lake supports, through the day after its last
    partition, whatever the run's date: each row only summarises events before its
    own timestamp, and point-in-time joins never read past an entity row's time. So
    a backfill of an earlier date, run after later ones, drops none of the snapshots
    that the later runs and the online store rely on.
    """
    import json

    from pyspark import StorageLevel

    from pipelines import ids
    from pipelines.ingest import lake_days, lake_frame
    from pipelines.spark import get_spark

    spark = get_spark(settings)
    through = max([logical_date, *lake_days(settings)])
    # Read once: the id maps and both tables read it again, and on a lake of a thousand
    # daily files opening them cost more than the work (5-10 s per read on 2 cores).
    lake = lake_frame(spark, settings, until=through).persist(StorageLevel.MEMORY_AND_DISK)
    users = ids.update_mapping(
        settings.ids_dir / "users.parquet", ids.distinct_ids(lake, "user_id")
    )
    items = ids.update_mapping(
        settings.ids_dir / "items.parquet", ids.distinct_ids(lake, "item_id")
    )
    events = ids.internal_events(spark, lake, users, items)
    meta_path = settings.dataset_dir / "items.parquet"
    meta = pd.read_parquet(meta_path).astype({"item_id": "string"}) if meta_path.exists() else None
    facts = json.loads((settings.dataset_dir / "dataset.json").read_text())
    attrs = item_attributes(meta, items, facts.get("genres", []))

    user_df, item_df = compute_features(spark, events, attrs, through)
    settings.offline_dir.mkdir(parents=True, exist_ok=True)
    n_users = write_offline(user_df, str(settings.offline_dir / "user_features"))
    n_items = write_offline(item_df, str(settings.offline_dir / "item_features"))
    out = {
        "user_rows": n_users,
        "item_rows": n_items,
        "events": lake.count(),
        "through": through.isoformat(),
    }
    lake.unpersist()
    return out
