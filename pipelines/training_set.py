"""Ranking queries and their negatives, built in Spark from the lake's events.

A query is (user, day). Its candidates are the items the user interacted with that day
(graded relevance = the day's latest rating) plus negatives (relevance 0): the items shown
that day and skipped, where the data logs impressions, or else sampled items already in
the catalogue before that day that the user had not interacted with by then. An item the
user takes up later is a fair negative for an earlier day: nothing at query time said
otherwise, and excluding it would let the query see the future. Random choices are seeded
hashes of the rows' ids, so a re-run gives the same rows whatever Spark's partitioning.
Features are joined afterwards by ``feature_store.historical_features``.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipelines.config import Settings
from pipelines.features import EPOCH, day_number

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession


HOLDOUT_QUERY_IDS = 1 << 40  # the first holdout query id, apart from every training id


def _rank(by: list[str], seed: int, *cols: str) -> Column:
    """A seeded pseudo-random order inside each ``by`` group, the same whatever the
    partitioning: a hash of the seed and the row's identity."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    order = F.xxhash64(F.lit(seed), *by, *cols)
    return F.row_number().over(Window.partitionBy(*by).orderBy(order, *cols))


def _small_frame(spark: SparkSession, frame: pd.DataFrame, ddl: str) -> DataFrame:
    """A small driver-side table as a Spark DataFrame, empty or not."""
    rows = frame.astype("int64").itertuples(index=False, name=None)
    return spark.createDataFrame(list(rows) if len(frame) else [], ddl)


def _catalogue(spark: SparkSession, events: DataFrame) -> tuple[DataFrame, np.ndarray]:
    """Items by first day seen, indexed 0..n-1 (one row per item: small), and their days."""
    from pyspark.sql import functions as F

    first_day = F.min(F.floor(F.col("timestamp") / 86_400)).cast("long").alias("first_day")
    first = events.groupBy("item_id").agg(first_day).toPandas()
    first = first.sort_values(["first_day", "item_id"]).reset_index(drop=True)
    frame = _small_frame(
        spark,
        pd.DataFrame({"_idx": np.arange(len(first), dtype=np.int64), "item_id": first["item_id"]}),
        "_idx long, item_id long",
    )
    return frame, first["first_day"].to_numpy()


def _sampled_negatives(
    spark: SparkSession,
    events: DataFrame,
    queries: DataFrame,
    k: int,
    seed: int,
    catalogue: tuple[DataFrame, np.ndarray] | None = None,
) -> DataFrame:
    """Up to ``k`` negatives per query (user, day): items in the catalogue strictly before
    the day that the user had not interacted with on or before the day (items they take
    up later are allowed: excluding them would leak the future into the query).

    A query whose pool holds at most ``4 k`` items considers all of them; a larger pool is
    drawn from ``4 k`` times (seeded hashes), which leaves ``k`` distinct unrated items
    unless the user rated most of the catalogue. ``catalogue`` is :func:`_catalogue` of
    ``events``, when the caller already has it.
    """
    from pyspark.sql import functions as F

    catalogue, first_days = catalogue or _catalogue(spark, events)
    days = [int(d) for d in queries.select("day").distinct().toPandas()["day"]]
    pool = _small_frame(
        spark,
        pd.DataFrame({"day": days, "_pool": np.searchsorted(first_days, days, side="left")}),
        "day long, _pool long",
    )
    draws = 4 * k
    per_query = queries.join(F.broadcast(pool), "day").where("_pool > 0")
    per_query = per_query.select(
        "user_id",
        "day",
        "_pool",
        F.explode(F.sequence(F.lit(0), F.least(F.col("_pool"), F.lit(draws)) - 1)).alias("_j"),
    )
    idx = F.when(F.col("_pool") <= draws, F.col("_j")).otherwise(
        F.pmod(F.xxhash64(F.lit(seed), "user_id", "day", "_j"), F.col("_pool"))
    )
    drawn = per_query.select("user_id", "day", idx.alias("_idx")).distinct()
    since = F.min(F.floor(F.col("timestamp") / 86_400)).cast("long").alias("_since")
    taken_up = events.groupBy("user_id", "item_id").agg(since)
    candidates = (
        drawn.join(F.broadcast(catalogue), "_idx")
        .join(taken_up, ["user_id", "item_id"], "left")
        .where(F.col("_since").isNull() | (F.col("_since") > F.col("day")))
    )
    return (
        candidates.withColumn("_r", _rank(["user_id", "day"], seed, "item_id"))
        .where(F.col("_r") <= k)
        .select("user_id", "item_id", "day", F.lit(0.0).alias("label"))
    )


def has_impressions(events: DataFrame) -> bool:
    """Whether the data logs impressions: shown items with label 0 (skipped)."""
    return bool(events.where("rating = 0").limit(1).count())


def build_queries(
    spark: SparkSession,
    events: DataFrame,
    first_day: int,
    last_day: int,
    negatives: int,
    max_positives: int,
    seed: int,
    impressions: bool,
    first_query_id: int = 0,
    max_queries: int | None = None,
    cap_seed: int = 0,
    catalogue: tuple[DataFrame, np.ndarray] | None = None,
) -> DataFrame:
    """Candidates for every (user, day) query with ``first_day <= day <= last_day``.

    ``events`` holds every interaction (internal ids, ``rating``, ``timestamp``). A query's
    candidates are the items the user interacted with that day, labelled by the day's
    latest rating: at most ``max_positives`` with a label above 0, chosen at random.
    With ``impressions`` (the data logs shown-and-skipped items as label 0) its negatives
    are up to ``negatives`` of those; otherwise they are sampled (:func:`_sampled_negatives`).
    Query ids are dense from ``first_query_id`` in (user, day) order. With ``max_queries``,
    only that many queries are kept, chosen as :func:`cap_queries` would with ``cap_seed``;
    they are chosen before their candidates are built, so only theirs are.
    Returns user_id, item_id, day, label, query_id, event_timestamp.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    day = F.floor(F.col("timestamp") / 86_400).cast("long")
    window = events.withColumn("day", day).where(F.col("day").between(first_day, last_day))
    # The day's latest label per (user, item): an aggregate, so partial sums run before
    # the shuffle (a window over the events sorted every one of them).
    shown = window.groupBy("user_id", "day", "item_id").agg(
        F.max_by("rating", F.struct("timestamp", "rating")).alias("label")
    )
    queries = shown.where("label > 0").select("user_id", "day").distinct()
    ids = queries.withColumn(
        "query_id",
        (F.dense_rank().over(Window.orderBy("user_id", "day")) - 1 + F.lit(first_query_id))
        # long before the cap hashes it, as the ids leave here
        .cast("long"),
    )
    if max_queries is not None:
        ids = _capped_ids(ids, max_queries, cap_seed)
    shown = shown.join(ids, ["user_id", "day"])
    positives = shown.where("label > 0")
    positives = positives.withColumn("_r", _rank(["user_id", "day"], seed, "item_id")).where(
        F.col("_r") <= max_positives
    )
    if impressions:
        negs = shown.where("label = 0")
        negs = negs.withColumn("_r", _rank(["user_id", "day"], seed + 1, "item_id")).where(
            F.col("_r") <= negatives
        )
    else:
        negs = _sampled_negatives(
            spark, events, ids.select("user_id", "day"), negatives, seed + 1, catalogue
        )
        negs = negs.join(ids, ["user_id", "day"])
    columns = ["user_id", "item_id", "day", "label", "query_id"]
    rows = positives.select(*columns).unionByName(negs.select(*columns))
    return rows.select(
        F.col("user_id").cast("long"),
        F.col("item_id").cast("long"),
        F.col("day").cast("long"),
        F.col("label").cast("double"),
        F.col("query_id").cast("long"),
        F.timestamp_seconds(F.col("day") * 86_400).alias("event_timestamp"),
    )


def _capped_ids(ids: DataFrame, max_queries: int, seed: int) -> DataFrame:
    """At most ``max_queries`` rows of ``ids`` (one per query), by a seeded hash of the id."""
    from pyspark.sql import functions as F

    return ids.orderBy(F.xxhash64(F.lit(seed), "query_id"), "query_id").limit(max_queries)


def cap_queries(queries: DataFrame, max_queries: int, seed: int) -> DataFrame:
    """At most ``max_queries`` whole queries, chosen at random (seeded)."""
    keep = _capped_ids(queries.select("query_id").distinct(), max_queries, seed)
    return queries.join(keep, "query_id", "left_semi")


def queries_for(
    spark: SparkSession, events: DataFrame, logical_date: date, settings: Settings
) -> dict[str, Any]:
    """The training and holdout queries of a run (entity rows, before features), the day
    bounds, and whether the data logs impressions.

    Training takes at most ``max_train_queries`` queries of the ``train_days`` before the
    holdout, the holdout at most ``max_holdout_queries`` of the last ``holdout_days``;
    holdout query ids start at :data:`HOLDOUT_QUERY_IDS`, apart from every training id.
    """
    impressions = has_impressions(events)
    bounds = day_bounds(logical_date, settings.holdout_days, settings.train_days)
    catalogue = None if impressions else _catalogue(spark, events)
    train = build_queries(
        spark,
        events,
        bounds["train_start"],
        bounds["train_end"],
        settings.negatives_per_query,
        settings.max_positives_per_query,
        settings.seed,
        impressions,
        max_queries=settings.max_train_queries,
        cap_seed=settings.seed,
        catalogue=catalogue,
    )
    holdout = build_queries(
        spark,
        events,
        bounds["train_end"] + 1,
        bounds["holdout_end"],
        settings.eval_negatives_per_query,
        10_000,
        settings.seed + 1,
        impressions,
        first_query_id=HOLDOUT_QUERY_IDS,
        max_queries=settings.max_holdout_queries,
        cap_seed=settings.seed + 1,
        catalogue=catalogue,
    )
    return {"train": train, "holdout": holdout, "bounds": bounds, "impressions": impressions}


def refit_rows(
    train: DataFrame,
    holdout: DataFrame,
    negatives: int,
    max_positives: int,
    max_queries: int,
    seed: int,
) -> DataFrame:
    """The training window and the holdout as one training set, under the training
    protocol: the holdout's queries keep at most ``max_positives`` positives and
    ``negatives`` negatives (it was built with more, for evaluation), chosen by the
    seeded hashes :func:`build_queries` uses, and at most ``max_queries`` whole queries
    are kept in all. A holdout query keeps its pairs: it keeps a positive and, if it had
    one, a negative."""
    from pyspark.sql import functions as F

    positive = F.col("label") > 0
    capped = (
        holdout.withColumn("_positive", positive)
        .withColumn("_r", _rank(["query_id", "_positive"], seed, "item_id"))
        .where(
            F.when(F.col("_positive"), F.col("_r") <= max_positives).otherwise(
                F.col("_r") <= negatives
            )
        )
        .drop("_positive", "_r")
    )
    # Holdout ids start at HOLDOUT_QUERY_IDS; XGBoost keeps a query id in 32 bits, so they
    # follow the training ids instead, in the same order.
    offset = (train.agg(F.max("query_id")).first()[0] or -1) + 1
    capped = capped.withColumn("query_id", F.col("query_id") - HOLDOUT_QUERY_IDS + offset)
    rows = train.unionByName(capped)
    return cap_queries(rows, max_queries, seed)


def pairable_queries(frame: DataFrame) -> tuple[DataFrame, int]:
    """The rows of queries that can form a pair (two candidates with different labels),
    and how many queries could not: a query of one candidate, or all of one label, teaches
    a ranker nothing. Such queries are dropped and counted, not failed on."""
    from pyspark.sql import functions as F

    labels = frame.groupBy("query_id").agg(F.countDistinct("label").alias("_labels"))
    keep = labels.where("_labels >= 2").select("query_id")
    dropped = labels.where("_labels < 2").count()
    return frame.join(keep, "query_id", "left_semi"), int(dropped)


def sample_queries(frame: DataFrame, max_rows: int, seed: int) -> DataFrame:
    """About ``max_rows`` rows of whole queries chosen at random (seeded), so that checks
    per query stay exact on the sample."""
    from pyspark.sql import functions as F

    rows = frame.count()
    if rows <= max_rows:
        return frame
    buckets = 1_000_000
    pick = F.pmod(F.xxhash64(F.lit(seed), "query_id"), F.lit(buckets)) < int(
        buckets * max_rows / rows
    )
    return frame.where(pick)


def dataset_hash(frame: DataFrame, columns: list[str]) -> str:
    """An order-independent content hash of a training set, for lineage."""
    from pyspark.sql import functions as F

    row = frame.select(F.xxhash64(*columns).cast("decimal(38,0)").alias("h")).agg(
        F.sum("h").alias("total"), F.count("*").alias("rows")
    )
    total, rows = row.first()
    return hashlib.sha256(f"{total}:{rows}".encode()).hexdigest()[:16]


def day_bounds(logical_date: date, holdout_days: int, train_days: int) -> dict[str, int]:
    """Train on [train_start, train_end], hold out (train_end, logical_date] (day numbers)."""
    last = day_number(logical_date)
    train_end = last - holdout_days
    return {"train_start": train_end - train_days + 1, "train_end": train_end, "holdout_end": last}


def day_to_date(day: int) -> date:
    return EPOCH + pd.Timedelta(days=int(day)).to_pytimedelta()


def utc_midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)
