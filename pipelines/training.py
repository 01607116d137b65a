"""Train the XGBoost ranker (``rank:ndcg``) on Spark with ``SparkXGBRanker``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

from pipelines import contracts

if TYPE_CHECKING:
    import xgboost
    from pyspark.sql import DataFrame, SparkSession


def partition_by_query(frame: DataFrame, n_partitions: int) -> DataFrame:
    """Each query group whole inside one partition and sorted by query id (xgboost#8491)."""
    return frame.repartitionByRange(n_partitions, "query_id").sortWithinPartitions("query_id")


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
        "eval_metric": "ndcg@10",
    }


def train_ranker(
    spark: SparkSession, train: pd.DataFrame, params: dict[str, Any]
) -> xgboost.Booster:
    """Fit ``SparkXGBRanker`` on ``train`` (MODEL_FEATURES, ``label``, ``query_id``)."""
    from xgboost.spark import SparkXGBRanker

    columns = [*contracts.MODEL_FEATURES, "label", "query_id"]
    frame = train[columns].astype({f: "float32" for f in contracts.MODEL_FEATURES})
    frame = frame.astype({"label": "float32", "query_id": "int64"})
    sdf = partition_by_query(spark.createDataFrame(frame), params["num_workers"])
    ranker = SparkXGBRanker(
        features_col=contracts.MODEL_FEATURES,
        label_col="label",
        qid_col="query_id",
        missing=float("nan"),
        **params,
    )
    return ranker.fit(sdf).get_booster()


def shuffle_labels(train: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The same queries with labels permuted inside each query: a deliberately useless model."""
    out = train.copy()
    out["label"] = out.groupby("query_id")["label"].transform(
        lambda s: s.sample(frac=1.0, random_state=seed).to_numpy()
    )
    return out
