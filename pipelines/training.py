"""Train the XGBoost ranker (``rank:ndcg``) on Spark with ``SparkXGBRanker``."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pandas as pd

from pipelines import contracts

if TYPE_CHECKING:
    import xgboost
    from pyspark.sql import DataFrame, SparkSession
    from xgboost.spark import SparkXGBRanker


def partition_by_query(frame: DataFrame, n_partitions: int, *within: str) -> DataFrame:
    """Each query group whole inside one partition and sorted by query id (xgboost#8491),
    then by the columns ``within``."""
    return frame.repartitionByRange(n_partitions, "query_id").sortWithinPartitions(
        "query_id", *within
    )


def ranker_params(settings: Any) -> dict[str, Any]:
    return {
        "objective": "rank:ndcg",
        "n_estimators": settings.n_estimators,
        "max_depth": settings.max_depth,
        "learning_rate": settings.learning_rate,
        "num_workers": settings.num_workers,
        "seed": settings.seed,
        "lambdarank_pair_method": "topk",
        "lambdarank_num_pair_per_sample": 10,
        # No evaluation set is passed, so a metric would only be computed on the training
        # rows at every round and logged: work that changes no tree.
        "disable_default_eval_metric": True,
    }


def ranker_input(train: DataFrame, partitions: int) -> DataFrame:
    """The model's columns of ``train``, typed, grouped by query into ``partitions``, each
    query's rows in one order whatever order they arrived in: by label, then by every
    feature (rows equal in all of them are interchangeable).

    XGBoost's histograms sum in row order, so rows in another order give another model:
    a training set written as two parquet files and the same set written as three gave
    NDCG@10 0.4842 and 0.4748. XGBoost sorts its input by query id alone, and Spark's
    optimizer drops a sort below another one, so the order only holds if the frame is
    persisted (:func:`train_rankers` does): the cached plan keeps it, and Spark then drops
    XGBoost's sort instead (the outer one is already satisfied)."""
    from pyspark.sql import functions as F

    frame = train.select(
        *[F.col(f).cast("float") for f in contracts.MODEL_FEATURES],
        F.col("label").cast("float"),
        F.col("query_id").cast("long"),
    )
    return partition_by_query(frame, partitions, "label", *contracts.MODEL_FEATURES)


def make_ranker(params: dict[str, Any]) -> SparkXGBRanker:
    from xgboost.spark import SparkXGBRanker

    return SparkXGBRanker(
        features_col=contracts.MODEL_FEATURES,
        label_col="label",
        qid_col="query_id",
        missing=float("nan"),
        **params,
    )


def train_ranker(
    train: DataFrame, params: dict[str, Any], partitions: int, without: list[str] = ()
) -> xgboost.Booster:
    """Fit ``SparkXGBRanker`` on ``train`` (MODEL_FEATURES, ``label``, ``query_id``), a Spark
    DataFrame all the way: the driver never holds the training rows. With ``partitions``
    other than ``num_workers``, XGBoost regroups them by range of query id itself.

    The inputs in ``without`` are set missing: a tree cannot split on them, so the model
    is the one the other inputs make, with the same columns (an ablation)."""
    return train_rankers({"model": (train, list(without))}, params, partitions, 1)["model"]


def _fit(prepared: DataFrame, params: dict[str, Any], without: list[str]) -> xgboost.Booster:
    from pyspark.sql import functions as F

    for name in without:  # after the sort: the rows keep the candidate's order
        prepared = prepared.withColumn(name, F.lit(None).cast("float"))
    return make_ranker(params).fit(prepared).get_booster()


def fits_at_once(spark: SparkSession, params: dict[str, Any]) -> int:
    """How many fits of ``params["num_workers"]`` barrier tasks the application's task
    slots hold at the same time (a barrier stage needs all its slots at once)."""
    return max(1, spark.sparkContext.defaultParallelism // params["num_workers"])


def train_rankers(
    fits: dict[str, tuple[DataFrame, list[str]]],
    params: dict[str, Any],
    partitions: int,
    at_once: int,
) -> dict[str, xgboost.Booster]:
    """:func:`train_ranker` for each named ``(train, without)``, ``at_once`` fits side by
    side from driver threads (each a Spark job of its own). One XGBoost fit keeps its
    ``num_workers`` tasks busy only while it boosts: its input's shuffle, the barrier
    stage's start and the booster's return leave the other slots idle, which the next fit
    fills (the README has the measure).

    Each distinct ``train`` frame is read, grouped and sorted once (:func:`ranker_input`)
    and persisted while its fits run: the ablations of a candidate share its input."""
    prepared: dict[int, DataFrame] = {}
    try:
        for train, _ in fits.values():
            if id(train) not in prepared:
                prepared[id(train)] = ranker_input(train, partitions).persist()
        with ThreadPoolExecutor(max_workers=max(1, at_once), thread_name_prefix="xgb") as pool:
            running = {
                name: pool.submit(_fit, prepared[id(train)], params, without)
                for name, (train, without) in fits.items()
            }
            return {name: future.result() for name, future in running.items()}
    finally:
        for frame in prepared.values():
            frame.unpersist()


def shuffle_labels(train: DataFrame, seed: int) -> DataFrame:
    """The same queries with labels permuted inside each query: a deliberately useless model."""

    def permute(group: pd.DataFrame) -> pd.DataFrame:
        return group.assign(label=group["label"].sample(frac=1.0, random_state=seed).to_numpy())

    return train.groupBy("query_id").applyInPandas(permute, schema=train.schema)
