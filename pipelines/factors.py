"""Collaborative factors: Spark MLlib's ALS (implicit preferences), point in time.

A factor snapshot stamped at day ``s`` (00:00 UTC) is fit on events strictly before ``s``,
so a point-in-time join at any moment of day ``d >= s`` sees nothing of day ``s`` or
later, exactly as with the activity features. The model never sees raw factors, only the
on-demand ``als_score`` (user . item, ``contracts.als_score``): the factors of two fits
live in different bases, but their dot products rank the same preferences, so a model
trained on older snapshots can score with the newest one.

Snapshots are fit on a grid of days (every ``als_every_days``, by default a step from the
lake's span, :func:`grid_step`; counted from the epoch, so that every run picks the same
days), from one step before the training window to the lake's last day, plus one at the
day after the lake's last day: the snapshot serving reads. A snapshot is fit once and kept; a run refits one of its own days only when the
events before it changed (a backfilled partition), which the manifest records as a count
and an order-free hash, or when the ALS configuration changed (:func:`als_key`). The
serving snapshots of earlier runs stay as they were: they are
what was served on those days, so the skew check can join the served rows back to them,
and later training rows may use them as of their time like any other snapshot. Snapshots
older than the run's first grid day can no longer be reached by a query and are dropped.

A snapshot's user rows do not end at its day. Serving reads a snapshot fit every day, but
a training or holdout query between two grid days would join a user's taste as of up to a
grid step ago (180 days on ML-1M). So each snapshot also holds, for every user that engaged
on a day ``a`` before the next snapshot, a row stamped ``a + 1``: its factors folded in
against the snapshot's item factors (the user half-step of ALS, exactly), its content
vector and its recent profile, all from its events before ``a + 1``
(:func:`fold_in_rows`). The point-in-time join then gives every query the user as of the
day before it, against item factors of the same fit.

Each snapshot also holds content vectors (Spark MLlib: TF-IDF of an item's title words and
topics, reduced to ``contracts.CONTENT_DIM`` by PCA and centred). An item's vector comes
from its metadata alone, so every item that appeared before the snapshot's day has one,
whether or not anyone engaged with it; a user's is the recency-weighted mean of the
vectors of the items it engaged with before that day. The model sees only their cosine
(``content_sim``). The TF-IDF vocabulary and the PCA basis are fit on the whole item
catalogue as delivered, so every run gets the same vectors; a change of catalogue or
method (``content_key``) refits every kept snapshot.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pipelines import catalog, contracts
from pipelines.config import Settings

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

PARTITION = "factor_day"  # the snapshot's day number; the folder name of its partition
# The content vectors' method; part of content_key, so changing it refits every snapshot.
CONTENT_METHOD = "tfidf-l2-pca-centred-v2"  # v2: axes from numpy
# fold_in_rows' groups of users: a Python call each, so few enough to cost nothing per
# call, and small enough to hold in a worker (a period's history of the 16M feed is a few
# million rows: some tens of thousands per group)
FOLD_IN_BUCKETS = 64


# The steps an automatic grid picks from (days): a calendar-like few, so that a lake that
# grows by a day changes its step only where its span crosses GRID_STEPS_PER_SPAN of one.
GRID_STEPS = (7, 15, 30, 60, 90, 180)
GRID_STEPS_PER_SPAN = 5


def grid_step(settings: Settings, first_day: int, last_day: int) -> int:
    """``als_every_days``, or when it is 0 the largest of ``GRID_STEPS`` that fits
    ``GRID_STEPS_PER_SPAN`` times into the lake's span (its first to its last day).

    The snapshot a query reads is up to a step old, and its user content vectors and ALS
    factors miss every user and item newer than it. A catalogue that turns over within a
    season needs a monthly grid, a years-long ratings log a half-yearly one: measured on a
    synthetic 180-day feed of 1M impressions, a 30-day grid lifted NDCG@10 from 0.6349 to
    0.6468 (the 180-day grid left the whole holdout on one snapshot up to 115 days old),
    for 13 s more of features."""
    if settings.als_every_days:
        return settings.als_every_days
    span = (last_day - first_day + 1) / GRID_STEPS_PER_SPAN
    return max([s for s in GRID_STEPS if s <= span], default=GRID_STEPS[0])


def snapshot_days(first_query_day: int, last_day: int, every: int) -> list[int]:
    """The days to keep a snapshot for: every grid day from the one at or before
    ``first_query_day`` through ``last_day``, and ``last_day + 1`` (serving)."""
    start = first_query_day - first_query_day % every
    return sorted({*range(start, last_day + 1, every), last_day + 1})


def _fingerprints(events: DataFrame, days: list[int]) -> dict[int, str]:
    """Per snapshot day, a count and order-free hash of the events before it: one pass."""
    from pyspark.sql import functions as F

    day = F.floor(F.col("timestamp") / 86_400).cast("long")
    bucket = F.lit(len(days))
    for i, d in reversed(list(enumerate(days))):
        bucket = F.when(day < d, F.lit(i)).otherwise(bucket)
    sums = (
        events.where("rating > 0")
        .select(
            bucket.alias("_b"),
            F.xxhash64("user_id", "item_id", "timestamp", "rating")
            .cast("decimal(38,0)")
            .alias("h"),
        )
        .groupBy("_b")
        .agg(F.count("*").alias("n"), F.sum("h").alias("h"))
        .collect()
    )
    per_bucket = {int(r["_b"]): (int(r["n"]), int(r["h"])) for r in sums}
    out, n, h = {}, 0, 0
    for i, d in enumerate(days):
        bn, bh = per_bucket.get(i, (0, 0))
        n, h = n + bn, h + bh
        out[d] = f"{n}:{h}"
    return out


def item_text(meta: pd.DataFrame | None, items: pd.DataFrame) -> pd.DataFrame | None:
    """The content corpus, one document per catalogue item: its title's words and one token
    per topic (``topic_<name>``). ``item_id`` is the internal id, or -1 for an item no event
    has named yet (it still shapes the vocabulary and the basis). None without any text."""
    if meta is None or not {"title", "genres"} & set(meta.columns):
        return None
    meta = meta.drop_duplicates("item_id").reset_index(drop=True)  # one document per item
    text = pd.Series("", index=meta.index)
    if "title" in meta:
        text = text + meta["title"].fillna("").astype(str)
    if "genres" in meta:
        tokens = meta["genres"].fillna("").astype(str).str.split("|")
        text = (
            text
            + " "
            + tokens.apply(
                lambda ts: " ".join(
                    "topic_" + re.sub(r"\W+", "_", t.strip().lower()) for t in ts if t
                )
            )
        )
    ids = items.set_index(items["external_id"].astype(str))["internal_id"]
    internal = meta["item_id"].astype(str).map(ids).fillna(-1).astype("int64")
    out = pd.DataFrame({"item_id": internal.to_numpy(), "text": text.str.strip().to_numpy()})
    return out if out["text"].str.len().gt(0).any() else None


def _principal_axes(rows, k: int):
    """The ``k`` principal axes of ``rows`` (a DataFrame of one MLlib vector column), as a
    (width, k) array, and the rows' mean.

    MLlib's ``PCA`` fits the same axes, but it takes a full SVD of the width x width
    covariance in the JVM, which without a native LAPACK (none ships with pyspark) runs in
    Java: 8.3 s of the 9.5 s that the vectors cost on ML-1M's 1,368 words. Here MLlib still
    computes the covariance and the mean, distributed, and numpy solves the symmetric
    eigenproblem in 0.3 s (the README has the measure). An axis's sign is arbitrary in both;
    a cosine of two vectors projected on the same axes does not depend on it.
    """
    import numpy as np
    from pyspark.mllib.linalg.distributed import RowMatrix

    matrix = RowMatrix(rows)
    values, axes = np.linalg.eigh(matrix.computeCovariance().toArray())
    top = np.argsort(values)[::-1][:k]
    return axes[:, top], matrix.computeColumnSummaryStatistics().mean()


def content_vectors(spark: SparkSession, text: pd.DataFrame) -> DataFrame | None:
    """Per internal item id, ``contracts.CONTENT_DIM`` floats: the item's TF-IDF (title words
    and topic tokens, English stop words removed, words in at least two items), L2
    normalised and projected on the corpus' first principal components, centred on the
    corpus' mean. Spark MLlib end to end but the eigenproblem (:func:`_principal_axes`);
    None when the corpus has no word shared by two items."""
    import numpy as np
    from pyspark.ml.feature import (
        IDF,
        CountVectorizer,
        Normalizer,
        RegexTokenizer,
        StopWordsRemover,
    )
    from pyspark.mllib.linalg import DenseMatrix
    from pyspark.mllib.linalg.distributed import IndexedRowMatrix
    from pyspark.mllib.util import MLUtils
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    docs = spark.createDataFrame(text[["item_id", "text"]])
    words = RegexTokenizer(
        inputCol="text", outputCol="words", pattern=r"[^\p{L}\p{N}_]+", minTokenLength=2
    ).transform(docs)
    terms = StopWordsRemover(inputCol="words", outputCol="terms").transform(words)
    counts = CountVectorizer(inputCol="terms", outputCol="tf", vocabSize=2048, minDF=2).fit(terms)
    if not counts.vocabulary:
        return None
    tf = counts.transform(terms)
    tfidf = IDF(inputCol="tf", outputCol="tfidf").fit(tf).transform(tf)
    unit = Normalizer(inputCol="tfidf", outputCol="unit").transform(tfidf)
    # the RDD-based linalg API reads MLlib's older vector type
    unit = MLUtils.convertVectorColumnsFromML(
        unit.select(F.col("item_id").alias("index"), F.col("unit").alias("vector")), "vector"
    ).cache()
    k = min(contracts.CONTENT_DIM, len(counts.vocabulary))
    axes, mean = _principal_axes(unit.select("vector"), k)
    # Centred: the projection of x - mean, so that cosines compare directions from the
    # average item. Padded with zero axes up to CONTENT_DIM for a tiny vocabulary.
    basis = np.zeros((axes.shape[0], contracts.CONTENT_DIM))
    basis[:, :k] = axes
    shift = np.asarray(mean) @ basis
    # the width given: with no item named yet the rows are empty and cannot tell it
    named = IndexedRowMatrix(unit.where(F.col("index") >= 0), numCols=basis.shape[0])
    projected = named.multiply(DenseMatrix(*basis.shape, basis.ravel(order="F").tolist()))
    schema = T.StructType(
        [T.StructField("item_id", T.LongType(), False)]
        + [T.StructField(c, T.FloatType(), False) for c in contracts.ITEM_CONTENT]
    )
    out = spark.createDataFrame(
        projected.rows.map(
            lambda row: (row.index, *(float(v) for v in row.vector.toArray() - shift))
        ),
        schema,  # given, not inferred: no extra job, and no catalogue item named yet is fine
    ).localCheckpoint()
    unit.unpersist()
    return out  # small; fit once, read by every snapshot of the run


def latest_engagements(events: DataFrame, day: int) -> DataFrame:
    """Per (user, item) engaged (rating > 0) before ``day``: its strongest rating and its
    latest time (``rating``, ``ts``)."""
    from pyspark.sql import functions as F

    engaged = events.where((F.col("rating") > 0) & (F.col("timestamp") < day * 86_400))
    return engaged.groupBy("user_id", "item_id").agg(
        F.max("rating").alias("rating"), F.max("timestamp").alias("ts")
    )


def user_content(latest: DataFrame, item_vectors: DataFrame, day: int, half_life: float):
    """Per user, the mean of the content vectors of the items it engaged with before ``day``
    (``latest``: :func:`latest_engagements` before ``day``), each weighted by
    ``0.5 ** (age in days / half_life)`` of its latest engagement."""
    from pyspark.sql import functions as F

    age = (F.lit(day * 86_400) - F.col("ts")) / 86_400.0
    weighted = latest.join(item_vectors, "item_id").select(
        "user_id", F.pow(F.lit(0.5), age / half_life).alias("w"), *contracts.ITEM_CONTENT
    )
    sums = [F.sum(F.col("w") * F.col(i)).alias(i) for i in contracts.ITEM_CONTENT]
    means = weighted.groupBy("user_id").agg(F.sum("w").alias("_w"), *sums)
    return means.select(
        "user_id",
        *[
            (F.col(i) / F.col("_w")).cast("float").alias(u)
            for i, u in zip(contracts.ITEM_CONTENT, contracts.USER_CONTENT, strict=True)
        ],
    )


def _checkpoint_dir(spark: SparkSession, settings: Settings) -> None:
    """ALS checkpoints its factors every 10 iterations, but only with a checkpoint
    directory; without one, 20 iterations overflowed the JVM's stack on ML-1M (the RDD
    lineage grows with every iteration). Under the shared data root, so a cluster's
    executors reach it too."""
    if not spark.sparkContext.getCheckpointDir():
        spark.sparkContext.setCheckpointDir(str(settings.data_dir / "spark-checkpoints"))


def recent_profiles(latest: DataFrame, item_factors: DataFrame) -> DataFrame:
    """Per user, the mean ALS factors (``contracts.USER_RECENT``) of the items of its latest
    ``contracts.RECENT_ITEMS`` engagements: ``latest`` holds (user_id, item_id, ts) with
    ``ts`` the pair's latest engagement; later first, ties by item id. Items without
    factors are skipped after the cut."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    order = Window.partitionBy("user_id").orderBy(F.desc("ts"), "item_id")
    last = latest.withColumn("_r", F.row_number().over(order)).where(
        F.col("_r") <= contracts.RECENT_ITEMS
    )
    means = [
        F.avg(i).cast("float").alias(u)
        for i, u in zip(contracts.ITEM_FACTORS, contracts.USER_RECENT, strict=True)
    ]
    return last.join(item_factors, "item_id").groupBy("user_id").agg(*means)


def _dense(frame: pd.DataFrame, key: str, columns: list[str]) -> np.ndarray:
    """Rows of ``frame`` as a (max id + 1, len(columns)) float64 array, NaN where none."""
    size = int(frame[key].max()) + 1 if len(frame) else 1
    out = np.full((size, len(columns)), np.nan)
    out[frame[key].to_numpy("int64")] = frame[columns].to_numpy("float64")
    return out


def fold_in_state(
    events: pd.DataFrame,
    days: list[int],
    item_factors: np.ndarray,
    item_content: np.ndarray | None,
    settings: Settings,
    gram: np.ndarray | None = None,
) -> np.ndarray:
    """One user's vectors (``contracts.USER_VECTORS``) at each of ``days``, from its engaged
    events before that day (``events``: item_id, rating, timestamp; the last
    ``als_window_days`` of them when set) against one snapshot's item factors:

    - its ALS factors folded in: Spark's implicit normal equations for one user, with the
      snapshot's item factors fixed (``(YᵀY + Σ c y yᵀ + λ n I) x = Σ (1 + c) y``,
      ``c = alpha · rating``), which is the step ALS itself takes for a user;
    - its content vector (:func:`user_content`) and recent profile (:func:`recent_profiles`).

    Items without factors in the snapshot (first engaged after it) add nothing to the
    first and third. ``gram`` is ``YᵀY`` of ``item_factors`` (computed when not given)."""
    return _fold_in(
        events["item_id"].to_numpy("int64"),
        events["rating"].to_numpy("float64"),
        events["timestamp"].to_numpy("int64"),
        days,
        item_factors,
        item_content,
        settings,
        gram,
    )


def _fold_in(
    items_all: np.ndarray,
    rating: np.ndarray,
    ts: np.ndarray,
    days: list[int],
    item_factors: np.ndarray,
    item_content: np.ndarray | None,
    settings: Settings,
    gram: np.ndarray | None = None,
) -> np.ndarray:
    """:func:`fold_in_state` on one user's events as arrays (item id, rating, timestamp)."""
    s = settings
    y_all = item_factors
    if gram is None:
        gram = np.nan_to_num(y_all).T @ np.nan_to_num(y_all)
    order = np.argsort(ts, kind="stable")
    ts = ts[order]
    items_all = items_all[order]
    rating = rating[order]
    uniq, local = np.unique(items_all, return_inverse=True)
    y_u = y_all[np.minimum(uniq, len(y_all) - 1)]
    y_u[uniq >= len(y_all)] = np.nan
    if item_content is not None:
        v_u = item_content[np.minimum(uniq, len(item_content) - 1)]
        v_u[uniq >= len(item_content)] = np.nan
    rank = len(contracts.USER_FACTORS)
    vectors = contracts.USER_VECTORS
    als_cols = contracts.column_span(vectors, contracts.USER_FACTORS)
    content_cols = contracts.column_span(vectors, contracts.USER_CONTENT)
    recent_cols = contracts.column_span(vectors, contracts.USER_RECENT)
    out = np.full((len(days), len(vectors)), np.nan)
    for row, day in enumerate(days):
        end = int(np.searchsorted(ts, day * 86_400, side="left"))
        start = (
            int(np.searchsorted(ts, (day - s.als_window_days) * 86_400, side="left"))
            if s.als_window_days
            else 0
        )
        r_max = np.full(len(uniq), -np.inf)
        t_max = np.full(len(uniq), np.iinfo(np.int64).min)
        np.maximum.at(r_max, local[start:end], rating[start:end])
        np.maximum.at(t_max, local[start:end], ts[start:end])
        seen = np.flatnonzero(r_max > -np.inf)
        if not seen.size:
            continue
        y = y_u[seen]
        has = ~np.isnan(y).any(axis=1)
        if has.any():
            yk, c = y[has], s.als_alpha * r_max[seen][has]
            a = gram + (yk * c[:, None]).T @ yk + s.als_reg * len(yk) * np.eye(rank)
            out[row, als_cols] = np.linalg.solve(a, ((1.0 + c)[:, None] * yk).sum(axis=0))
        if item_content is not None:
            v = v_u[seen]
            hv = ~np.isnan(v).any(axis=1)
            if hv.any():
                age = (day * 86_400 - t_max[seen][hv]) / 86_400.0
                w = np.power(0.5, age / s.content_half_life_days)
                out[row, content_cols] = (w[:, None] * v[hv]).sum(axis=0) / w.sum()
        latest = seen[np.lexsort((uniq[seen], -t_max[seen]))][: contracts.RECENT_ITEMS]
        recent = y_u[latest]
        recent = recent[~np.isnan(recent).any(axis=1)]
        if len(recent):
            out[row, recent_cols] = recent.mean(axis=0)
    return out


# The fold-in's batches (``fold_in_users``): user-days solved together. A batch's normal
# equations are a (n, rank, rank) float64 stack, 32 MB at rank 32, and about five times
# that at the peak (their running sums and the solve's copies), per Python worker.
FOLD_IN_CHUNK_QUERIES = 4096
# The batched fold-in keys each user's recency weights to its first day: 2 ** (days / half-
# life) must stay far from float64's range over a bucket's days, else users go one by one.
FOLD_IN_MAX_HALF_LIVES = 500


def fold_in_users(
    user: np.ndarray,
    item: np.ndarray,
    rating: np.ndarray,
    ts: np.ndarray,
    day: int,
    item_factors: np.ndarray,
    item_content: np.ndarray | None,
    settings: Settings,
    gram: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`fold_in_state` for many users at once, from their engaged events as arrays:
    every user at each day after one it engaged on from ``day`` on, from all of its events
    before that day. Returns the rows' user ids, days and vectors, by user and day.

    Without ``als_window_days`` (the default), the events before a day are a prefix of
    those before the next, so all that the fold-in sums is a running sum over a user's
    events in time order, which :func:`_fold_in_prefix` takes for many users at once: one
    matrix product per user-day and one batched solve, where :func:`_fold_in` makes some
    twenty numpy calls per user-day (the README has the ratio). With a window, or a
    content half-life under 1/``FOLD_IN_MAX_HALF_LIVES`` of the bucket's days, each user
    goes through :func:`_fold_in` in turn."""
    if gram is None:
        gram = np.nan_to_num(item_factors).T @ np.nan_to_num(item_factors)
    user, item, ts = (np.asarray(x, dtype=np.int64) for x in (user, item, ts))
    rating = np.asarray(rating, dtype=np.float64)
    fresh = ts >= day * 86_400
    pairs = np.unique(np.stack([user[fresh], ts[fresh] // 86_400 + 1], axis=1), axis=0)
    q_user, q_day = pairs[:, 0], pairs[:, 1]
    vectors = np.empty((0, len(contracts.USER_VECTORS)))
    if not len(q_user):
        return q_user, q_day, vectors
    # by user, then time; ties by item id, descending: walked back, the recent profile's order
    keep = np.isin(user, q_user)
    order = np.lexsort((-item[keep], ts[keep], user[keep]))
    user, item, rating, ts = (x[keep][order] for x in (user, item, rating, ts))
    users = np.unique(q_user)
    first_event = np.searchsorted(user, users, "left")
    ends = np.searchsorted(user, users, "right")
    last_query = np.searchsorted(q_user, users, "right")
    half_lives = (q_day.max() - q_day.min()) / settings.content_half_life_days
    one_by_one = bool(settings.als_window_days) or (
        item_content is not None and half_lives > FOLD_IN_MAX_HALF_LIVES
    )
    states, q0, u0 = [], 0, 0
    while u0 < len(users):
        if one_by_one:
            u1 = u0 + 1
        else:  # whole users, about FOLD_IN_CHUNK_QUERIES of their days at a time
            u1 = max(u0 + 1, int(np.searchsorted(last_query, q0 + FOLD_IN_CHUNK_QUERIES, "right")))
        q1, e0, e1 = int(last_query[u1 - 1]), int(first_event[u0]), int(ends[u1 - 1])
        part = (item[e0:e1], rating[e0:e1], ts[e0:e1])
        if one_by_one:
            days = q_day[q0:q1].tolist()
            states.append(_fold_in(*part, days, item_factors, item_content, settings, gram))
        else:
            states.append(
                _fold_in_prefix(
                    user[e0:e1],
                    *part,
                    q_user[q0:q1],
                    q_day[q0:q1],
                    item_factors,
                    item_content,
                    settings,
                    gram,
                )
            )
        q0, u0 = q1, u1
    return q_user, q_day, np.concatenate(states)


def _lookup(table: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``table`` for ``ids``, zero where it has none (past its end, or NaN), and
    whether it had one."""
    rows = np.zeros((len(ids), table.shape[1]))
    inside = ids < len(table)
    rows[inside] = table[ids[inside]]
    ok = inside & ~np.isnan(rows).any(axis=1)
    rows[~ok] = 0.0
    return rows, ok


def _running(x: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """Cumulative sums of ``x``'s rows within each user (``owner``: the row of the user's
    first day). Per user, not a sum over the batch less the users before: a light user's
    sum would lose its digits against a heavy one's."""
    flat = pd.DataFrame(x.reshape(len(x), -1)).groupby(owner, sort=False).cumsum()
    return flat.to_numpy().reshape(x.shape)


def _fold_in_prefix(
    user: np.ndarray,
    item: np.ndarray,
    rating: np.ndarray,
    ts: np.ndarray,
    q_user: np.ndarray,
    q_day: np.ndarray,
    item_factors: np.ndarray,
    item_content: np.ndarray | None,
    settings: Settings,
    gram: np.ndarray,
) -> np.ndarray:
    """The vectors of the user-days ``(q_user, q_day)``, sorted, from the users' events
    (sorted by user and time, ties by item id descending; none on or after the user's
    last day, and one at least on the day before each of its days).

    The fold-in reads, per (user, item), the strongest rating and the latest time of its
    events before the day. In time order, an event raises the item's ``c`` by
    ``alpha · (r_max - r_max before)`` (the first adds one more to the right-hand side's
    ``1 + c``, and counts the item in the regularisation), and moves the item's recency
    weight from its previous time's to its own. Summed per day and accumulated per user,
    these give every day's normal equations and content vector. The recent profile walks
    back from each day's last event (:func:`_recent_profiles`)."""
    s, rank, n = settings, item_factors.shape[1], len(user)
    day_s = q_day * 86_400
    base = min(int(ts.min()), int(day_s.min()))
    if int(day_s.max()) - base >= 1 << 32:
        raise ValueError("the fold-in keys a time in 32 bits: its events span over 136 years")
    q = np.searchsorted((q_user << 32) | (day_s - base), (user << 32) | (ts - base), "right")
    if q.max() >= len(q_user) or (q_user[q] != user).any() or len(np.unique(q)) != len(q_user):
        raise ValueError("every event must precede its user's last day, and every day follow one")
    # per (user, item): its events in time order (a stable sort of the time order)
    g = np.lexsort((np.arange(n), item, user))
    first = np.ones(n, dtype=bool)
    first[1:] = (user[g][1:] != user[g][:-1]) | (item[g][1:] != item[g][:-1])
    r_max = pd.Series(rating[g]).groupby(np.cumsum(first)).cummax().to_numpy()
    delta_c, is_first = np.empty(n), np.empty(n, dtype=bool)
    delta_c[g] = s.als_alpha * (r_max - np.where(first, 0.0, np.roll(r_max, 1)))
    is_first[g] = first
    later = np.full(n, np.iinfo(np.int64).max)  # the time of the item's next engagement
    later[g[:-1]] = np.where(first[1:], later[g[:-1]], ts[g][1:])
    y, has_y = _lookup(item_factors, item)

    starts = np.searchsorted(q, np.arange(len(q_user)), "left")  # each day's first event
    ends = np.r_[starts[1:], n]
    # Σ Δc y yᵀ per day: one product of the day's events each (one stack of outer products
    # over all events was 2.5x slower than the per-user loop on ML-1M: memory-bound)
    weighted = y * (delta_c * has_y)[:, None]
    a = np.stack([weighted[lo:hi].T @ y[lo:hi] for lo, hi in zip(starts, ends, strict=True)])
    a = a.reshape(len(q_user), rank * rank)
    b = np.add.reduceat(y * ((delta_c + is_first) * has_y)[:, None], starts, axis=0)
    count = np.add.reduceat((is_first & has_y).astype(float), starts)
    user_first = np.flatnonzero(np.r_[True, q_user[1:] != q_user[:-1]])
    owner = np.repeat(user_first, np.diff(np.r_[user_first, len(q_user)]))
    a, b, count = _running(a, owner), _running(b, owner), _running(count, owner)

    vectors = contracts.USER_VECTORS
    out = np.full((len(q_user), len(vectors)), np.nan)
    solvable = count > 0
    eqs = a[solvable].reshape(-1, rank, rank) + gram
    eqs += (s.als_reg * count[solvable])[:, None, None] * np.eye(rank)
    out[solvable, contracts.column_span(vectors, contracts.USER_FACTORS)] = np.linalg.solve(
        eqs, b[solvable][:, :, None]
    )[:, :, 0]
    if item_content is not None:
        # 0.5 ** (age / half-life) = 2 ** ((t - t0) / half-life) * 2 ** ((t0 - day) / ...):
        # the second factor is the same for all of a day's items and cancels in the mean.
        # t0 is the user's first day: the weights of its later events stay under
        # 2 ** FOLD_IN_MAX_HALF_LIVES (fold_in_users), and an event old enough to
        # underflow here underflows in the per-day weights too.
        v, has_v = _lookup(item_content, item)
        t0 = day_s[user_first][np.searchsorted(q_user[user_first], user)]
        half_life = 86_400.0 * s.content_half_life_days
        was = np.empty(n)
        was[g] = np.where(first, 0.0, np.exp2((np.roll(ts[g], 1) - t0[g]) / half_life))
        moved = (np.exp2((ts - t0) / half_life) - was) * has_v
        sums = _running(np.add.reduceat(v * moved[:, None], starts, axis=0), owner)
        weights = _running(np.add.reduceat(moved, starts), owner)
        ok = weights > 0
        content = contracts.column_span(vectors, contracts.USER_CONTENT)
        out[ok, content] = sums[ok] / weights[ok, None]
    out[:, contracts.column_span(vectors, contracts.USER_RECENT)] = _recent_profiles(
        y, has_y, later, np.searchsorted(user, q_user, "left"), ends, day_s
    )
    return out


def _recent_profiles(
    y: np.ndarray,
    has_y: np.ndarray,
    later: np.ndarray,
    first_event: np.ndarray,
    ends: np.ndarray,
    day_s: np.ndarray,
) -> np.ndarray:
    """Per user-day, the mean factors of the items of its latest ``RECENT_ITEMS``
    engagements before it (:func:`recent_profiles`): walking back from the day's last
    event (``ends``, exclusive) to the user's first (``first_event``), over the events
    that are their item's latest before the day (``later``: the item's next engagement
    is on or after it). Items without factors are skipped after the cut."""
    out = np.full((len(ends), y.shape[1]), np.nan)
    pending, width = np.arange(len(ends)), contracts.RECENT_ITEMS
    while pending.size:  # a wider window for the days whose first did not hold enough
        idx = ends[pending, None] - 1 - np.arange(width)
        valid = idx >= first_event[pending, None]
        idx = np.where(valid, idx, 0)
        latest = valid & (later[idx] >= day_s[pending, None])
        taken = latest & (np.cumsum(latest, axis=1) <= contracts.RECENT_ITEMS)
        done = (taken.sum(axis=1) == contracts.RECENT_ITEMS) | ~valid[:, -1]
        use = (taken & has_y[idx])[done]
        count = use.sum(axis=1)
        means = (y[idx[done]] * use[..., None]).sum(axis=1) / np.maximum(count, 1)[:, None]
        out[pending[done]] = np.where(count[:, None] > 0, means, np.nan)
        pending, width = pending[~done], width * 2
    return out


def fold_in_rows(
    events: DataFrame,
    day: int,
    until: int,
    item_factors: DataFrame,
    item_vectors: DataFrame | None,
    settings: Settings,
    buckets: int = FOLD_IN_BUCKETS,
) -> DataFrame | None:
    """Fresh user rows between two snapshots: for each user that engaged on a day ``a`` in
    [``day``, ``until - 2``], a row stamped ``a + 1`` with its vectors then
    (:func:`fold_in_state`, against snapshot ``day``'s item factors). A query between
    snapshots so joins the user's taste as of the day before it, as serving (a fresh
    snapshot every day) does, not as of a grid step ago. None when no day lies between.
    The users are folded in ``buckets`` groups (by a hash of their id), one Python call each."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    if until - day < 2:
        return None
    engaged = events.where(F.col("rating") > 0).where(F.col("timestamp") < (until - 1) * 86_400)
    active = engaged.where(F.col("timestamp") >= day * 86_400).select("user_id").distinct()
    history = engaged.join(active, "user_id", "left_semi").select(
        F.col("user_id").cast("long"),
        F.col("item_id").cast("long"),
        F.col("rating").cast("double"),
        F.col("timestamp").cast("long"),
    )
    y = _dense(item_factors.toPandas(), "item_id", contracts.ITEM_FACTORS)
    v = (
        None
        if item_vectors is None
        else _dense(item_vectors.toPandas(), "item_id", contracts.ITEM_CONTENT)
    )
    gram = np.nan_to_num(y).T @ np.nan_to_num(y)  # once per snapshot, not per user

    def fold(rows: pd.DataFrame) -> pd.DataFrame:
        """Every user of one bucket (``rows`` holds each of them whole, in any order)."""
        users, days, states = fold_in_users(
            rows["user_id"].to_numpy("int64"),
            rows["item_id"].to_numpy("int64"),
            rows["rating"].to_numpy("float64"),
            rows["timestamp"].to_numpy("int64"),
            day,
            y,
            v,
            settings,
            gram,
        )
        frame = pd.DataFrame(states.astype("float32"), columns=contracts.USER_VECTORS)
        frame.insert(0, "stamp", days * 86_400)
        frame.insert(0, "user_id", users)
        return frame

    schema = T.StructType(
        [T.StructField("user_id", T.LongType()), T.StructField("stamp", T.LongType())]
        + [T.StructField(c, T.FloatType()) for c in contracts.USER_VECTORS]
    )
    # Many users per Python call, grouped by a hash bucket of the user: applyInPandas by
    # user made a pandas frame in and out per user, which cost more than the fold-in
    # itself (53 s of a period's fresh rows on the 4M feed; the README has the measure).
    # A group is a requirement Spark keeps whole, where a repartition by user is a hint
    # that it may drop (the semi join above is partitioned by user already) and AQE may
    # then undo (a join turned into a broadcast at run time reads its input unshuffled).
    bucket = F.pmod(F.xxhash64("user_id"), F.lit(buckets))
    rows = history.withColumn("_bucket", bucket).groupBy("_bucket").applyInPandas(fold, schema)
    return rows.select(
        "user_id",
        F.timestamp_seconds("stamp").alias("event_timestamp"),
        *contracts.USER_VECTORS,
    )


def fit_snapshot(
    events: DataFrame,
    day: int,
    settings: Settings,
    item_vectors: DataFrame | None = None,
    until: int | None = None,
) -> tuple[DataFrame, DataFrame] | None:
    """ALS on the events before ``day`` (rating > 0 = engaged; a (user, item)'s strongest
    engagement is its confidence), and the users' content vectors and recent profiles from
    the same events. Returns per-user and per-item rows (``contracts.USER_VECTORS``,
    ``ITEM_VECTORS``) stamped at ``day``: every item that any event before ``day`` named has
    a row with its content vector, its ALS factors null when none engaged with it. With
    ``until`` (the next snapshot's day), the user rows also hold :func:`fold_in_rows` for
    the days between. None when there is nothing to fit."""
    from pyspark.ml.recommendation import ALS
    from pyspark.sql import functions as F

    ts = F.col("timestamp")
    window = events
    if settings.als_window_days:
        window = events.where(ts >= (day - settings.als_window_days) * 86_400)
    # One aggregate of the events feeds the fit, the recent profiles and the content
    # vectors. Not cached: at 16M events a kept copy per snapshot would pile up in the
    # executor until the cleaner frees it, for 4 s of 169 on ML-1M (within the noise).
    pairs = latest_engagements(window, day)
    if not pairs.limit(1).count():
        return None
    spark = events.sparkSession
    als = ALS(
        rank=contracts.ALS_RANK,
        maxIter=settings.als_iterations,
        regParam=settings.als_reg,
        alpha=settings.als_alpha,
        implicitPrefs=True,
        seed=settings.seed,
        userCol="user_id",
        itemCol="item_id",
        ratingCol="rating",
        # a block per core (the default is 10): each block is a task in every step
        numUserBlocks=spark.sparkContext.defaultParallelism,
        numItemBlocks=spark.sparkContext.defaultParallelism,
    )
    _checkpoint_dir(spark, settings)
    model = als.fit(
        pairs.select(F.col("user_id").cast("int"), F.col("item_id").cast("int"), "rating")
    )
    stamp = F.timestamp_seconds(F.lit(day * 86_400)).alias("event_timestamp")

    def columns(frame: DataFrame, key: str, names: list[str]) -> DataFrame:
        vector = [F.col("features")[k].cast("float").alias(n) for k, n in enumerate(names)]
        return frame.select(F.col("id").cast("long").alias(key), *vector)

    users = columns(model.userFactors, "user_id", contracts.USER_FACTORS)
    items = columns(model.itemFactors, "item_id", contracts.ITEM_FACTORS)
    users = users.join(recent_profiles(pairs, items), "user_id", "left")
    if item_vectors is None:
        users = users.select(
            "*", *[F.lit(None).cast("float").alias(c) for c in contracts.USER_CONTENT]
        )
        fresh = fold_in_rows(events, day, until, items, None, settings) if until else None
        items = items.select(
            "*", *[F.lit(None).cast("float").alias(c) for c in contracts.ITEM_CONTENT]
        )
    else:
        profiles = user_content(pairs, item_vectors, day, settings.content_half_life_days)
        users = users.join(profiles, "user_id", "full_outer")
        fresh = fold_in_rows(events, day, until, items, item_vectors, settings) if until else None
        # items that existed before the day (any event, a skipped impression too): what a
        # query then could rank; the same rows however late a run fits the snapshot
        seen = events.where(ts < day * 86_400).select("item_id").distinct()
        items = items.join(item_vectors.join(seen, "item_id"), "item_id", "full_outer")
    users = users.select("user_id", stamp, *contracts.USER_VECTORS)
    return (
        users if fresh is None else users.unionByName(fresh),
        items.select("item_id", stamp, *contracts.ITEM_VECTORS),
    )


def _partition(table: Path, day: int) -> Path:
    return table / f"{PARTITION}={day}"


def als_key(settings: Settings) -> str:
    """What an ALS fit depends on besides its events: changing any of it refits the
    snapshots of the run's grid (a served one is kept as served)."""
    s = settings
    return (
        f"als:r{contracts.ALS_RANK}:i{s.als_iterations}:l{s.als_reg}:a{s.als_alpha}"
        f":w{s.als_window_days}"
    )


def content_key(text: pd.DataFrame | None) -> str:
    """What a snapshot's content vectors depend on besides the events: the corpus and the
    method. A change refits every kept snapshot, so no two of them mix vector schemas."""
    if text is None:
        return "none"
    digest = hashlib.sha1(f"{CONTENT_METHOD}:{contracts.CONTENT_DIM}".encode())
    for doc in text["text"]:
        digest.update(doc.encode() + b"\0")
    return digest.hexdigest()[:16]


def _partition_days(table: Path) -> set[int]:
    return {int(p.name.split("=", 1)[1]) for p in table.glob(f"{PARTITION}=*")}


def update_factors(
    spark: SparkSession,
    events: DataFrame,
    settings: Settings,
    first_query_day: int,
    last_day: int,
    text: pd.DataFrame | None = None,
    every: int | None = None,
) -> dict:
    """Bring both factor tables to ``snapshot_days``: fit the snapshots that are missing or
    whose events changed, write each atomically (a staging folder renamed into place), and
    drop every snapshot that is no longer wanted. ``text`` is the content corpus
    (:func:`item_text`); without it the content vectors are null. A kept snapshot of an
    earlier run (a served one) is refit only when the content inputs changed
    (:func:`content_key`); one of the grid is refit when its events or the ALS
    configuration (:func:`als_key`) changed. ``every`` is the grid's step (default
    ``settings.als_every_days``). Returns the step and what was fit and kept."""
    every = every or settings.als_every_days
    if every <= 0:
        raise ValueError("the grid needs a step: pass grid_step(...) as every")
    days = snapshot_days(first_query_day, last_day, every)
    tables = {k: catalog.FACTOR_TABLE.path(settings, kind=k) for k in ("user", "item")}
    recorded = catalog.FACTOR_MANIFEST.load_or_none(settings)
    manifest = dict(recorded.root) if recorded else {}
    content, als = content_key(text), als_key(settings)
    existing = set.intersection(*(_partition_days(t) for t in tables.values()))
    earlier = {d for d in existing if d >= days[0] and d not in days}  # served, kept
    kept_days = sorted({*days, *earlier})
    prints = _fingerprints(events, kept_days)
    fitted, empty = [], []
    # A snapshot's user rows run up to the next snapshot (fold_in_rows): its entry names
    # that day and the events before it, so new ones in between refit it. The content key
    # stays last (an earlier run's served snapshot is checked against it alone).
    until = dict(zip(kept_days, [*kept_days[1:], None], strict=True))
    wanted = {
        day: f"{prints[day]}|{als}|to:{until[day]}:{prints.get(until[day], '')}|{content}"
        for day in kept_days
    }
    to_fit = [
        day
        for day, want in wanted.items()
        if not (
            # kept as served unless its vectors' inputs changed
            manifest.get(str(day), "").rpartition("|")[2] == content
            if day in earlier
            else day in existing and manifest.get(str(day)) == want
        )
    ]
    item_vectors = content_vectors(spark, text) if to_fit and text is not None else None
    _checkpoint_dir(spark, settings)  # once, before the threads: each set makes a new dir
    # Two fits at a time, from two driver threads: an ALS fit on a few cores is mostly
    # short stages and the driver's scheduling between them, which a second fit fills
    # (on ML-1M's six fits, 52 s -> 43 s; the README has the measure). Written one at a
    # time, in day order.
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="als") as pool:
        fits = [
            (day, pool.submit(fit_snapshot, events, day, settings, item_vectors, until[day]))
            for day in to_fit
        ]
        for day, fit in fits:
            want = wanted[day]
            snapshot = fit.result()
            if snapshot is None:
                empty.append(day)
                continue
            # The day's entry goes before its partitions are replaced and comes back
            # after: a run killed in between leaves a snapshot the manifest does not
            # vouch for, which the next run refits, never one recorded with the inputs
            # of another fit.
            if manifest.pop(str(day), None) is not None:
                catalog.FACTOR_MANIFEST.save(settings, manifest)
            for table, frame in zip(tables.values(), snapshot, strict=True):
                staging = table / f"_staging_{PARTITION}={day}"
                frame.write.mode("overwrite").parquet(str(staging))
                shutil.rmtree(_partition(table, day), ignore_errors=True)
                staging.rename(_partition(table, day))
            manifest[str(day)] = want
            catalog.FACTOR_MANIFEST.save(settings, manifest)
            fitted.append(day)
    kept = set()
    for table in tables.values():
        for part in table.glob(f"{PARTITION}=*"):
            day = int(part.name.split("=", 1)[1])
            if day < days[0]:  # before the window's first grid day: no query reaches it
                shutil.rmtree(part)
            else:
                kept.add(day)
    manifest = {d: v for d, v in manifest.items() if int(d) in kept}
    catalog.FACTOR_MANIFEST.save(settings, manifest)
    return {"every_days": every, "days": sorted(kept), "fitted": fitted}


def snapshots_through(settings: Settings, last: int) -> dict[str, str]:
    """The manifest's snapshots stamped on or before day ``last``: the factor data a run's
    rows (and its online rows, loaded through ``last``) can join, for the model's lineage."""
    manifest = catalog.FACTOR_MANIFEST.load_or_none(settings)
    return {d: v for d, v in (manifest.root if manifest else {}).items() if int(d) <= last}
