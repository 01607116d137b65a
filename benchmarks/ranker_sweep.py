"""Quick offline sweeps of the ranker on one finished run: single-node ``xgboost.XGBRanker``
on the run's training set, scored on its holdout with the pipeline's own metrics.

``uv run python -m benchmarks.ranker_sweep [--date YYYY-MM-DD]`` (default: the newest run
under ``CR_DATA_DIR``). It prints NDCG@10 per variant; the DAG's SparkXGBRanker lands within
about 0.001 of the ``base`` line on the same data. For comparing configurations before a
full run; the report's numbers come from the DAG.
"""

from __future__ import annotations

import argparse
from datetime import date

import pandas as pd

from pipelines import catalog, contracts, evaluation
from pipelines.config import get_settings

BASE = {
    "n_estimators": 200,
    "max_depth": 6,
    "learning_rate": 0.1,
    "lambdarank_pair_method": "topk",
    "lambdarank_num_pair_per_sample": 10,
}
VARIANTS = {
    "base": {},
    "mean pairs": {"lambdarank_pair_method": "mean", "lambdarank_num_pair_per_sample": 1},
    "depth 4, 400 trees, lr 0.05": {"max_depth": 4, "n_estimators": 400, "learning_rate": 0.05},
    "400 trees, lr 0.05, subsample 0.8": {
        "n_estimators": 400,
        "learning_rate": 0.05,
        "subsample": 0.8,
        "colsample_bytree": 0.8,
    },
    "min_child_weight 10": {"min_child_weight": 10},
    "100 trees": {"n_estimators": 100},
}


def ndcg(train: pd.DataFrame, holdout: pd.DataFrame, params: dict, seed: int) -> float:
    import xgboost as xgb

    features = list(contracts.MODEL_FEATURES)
    model = xgb.XGBRanker(
        objective="rank:ndcg", eval_metric="ndcg@10", seed=seed, n_jobs=2, **params
    )
    model.fit(train[features].astype("float32"), train["label"], qid=train["query_id"])
    scored = holdout.assign(score=model.predict(holdout[features].astype("float32")))
    return evaluation.summarise(evaluation.per_query_metrics(scored, "score", seed))["ndcg@10"]


def main() -> None:
    settings = get_settings()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--date", type=date.fromisoformat, help="the run's logical date")
    day = ap.parse_args().date or catalog.SUMMARY.dates(settings)[-1]
    train, holdout = (
        pd.read_parquet(entry.path(settings, date=day)).sort_values("query_id", kind="stable")
        for entry in (catalog.TRAINING_SET, catalog.HOLDOUT)
    )
    queries = f"{train.query_id.nunique()} training, {holdout.query_id.nunique()} holdout queries"
    print(f"run {day}: {queries}")
    for name, change in VARIANTS.items():
        score = ndcg(train, holdout, BASE | change, settings.seed)
        print(f"{name:40s} NDCG@10 {score:.4f}", flush=True)


if __name__ == "__main__":
    main()
