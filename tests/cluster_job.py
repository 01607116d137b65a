"""Train the ranker on a Spark standalone cluster, in a process of its own (a Python process
holds one SparkContext; the test session's is ``local[2]``). Prints a JSON line of facts.

``python tests/cluster_job.py spark://host:port``
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd

from pipelines import contracts
from pipelines.config import Settings
from pipelines.spark import get_spark
from pipelines.training import ranker_params, train_ranker


def main(master: str) -> None:
    # one fit across both workers, as the cluster profile's settings.env has it
    settings = Settings(
        spark_master=master,
        spark_executor_memory="1g",
        n_estimators=20,
        num_workers=2,
        train_partitions=2,
    )
    spark = get_spark(settings)
    rng = np.random.default_rng(0)
    rows, queries = 6_000, 300
    frame = pd.DataFrame(
        rng.random((rows, len(contracts.MODEL_FEATURES))).astype("float32"),
        columns=contracts.MODEL_FEATURES,
    )
    frame["query_id"] = np.repeat(np.arange(queries), rows // queries)
    signal = frame[contracts.MODEL_FEATURES[0]] + 0.1 * rng.random(rows)
    frame["label"] = (signal > signal.groupby(frame["query_id"]).transform("median")).astype(int)
    frame["item_id"] = np.tile(np.arange(rows // queries), queries)
    train = spark.createDataFrame(frame)
    booster = train_ranker(train, ranker_params(settings), settings.train_partitions)
    scores = booster.inplace_predict(frame[contracts.MODEL_FEATURES].to_numpy())
    executors = spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size() - 1  # minus driver
    print(
        json.dumps(
            {
                "master": spark.sparkContext.master,
                "executors": executors,
                "trees": booster.num_boosted_rounds(),
                "score_label_corr": float(np.corrcoef(scores, frame["label"])[0, 1]),
            }
        )
    )
    spark.stop()


if __name__ == "__main__":
    main(sys.argv[1])
