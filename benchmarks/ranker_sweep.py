"""Offline sweeps of the ranker's XGBoost settings on one finished run.

Single-node ``xgboost.train`` with the DAG's parameters (``training.ranker_params``), changed
per variant, on the run's training set, scored on its holdout with the pipeline's own
metrics. Each configuration is fit on ``--orders`` shuffles of the rows within their
queries, since the row order alone moves NDCG@10 by about ±0.003 (XGBoost sums in row
order), and a variant that samples rows or columns also on ``--seeds`` seeds, since the
seed moves it as much. The mean over every fit is the configuration's figure.

``uv run python -m benchmarks.ranker_sweep [--date YYYY-MM-DD]`` (default: the newest run
under ``CR_DATA_DIR``) prints one line per variant and writes
``benchmarks/results/ranker_sweep.json``. It compares configurations before a whole run
pays for them; the numbers a run reports come from the DAG.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.serve_bench import machine
from pipelines import catalog, contracts, evaluation
from pipelines.config import Settings, get_settings
from pipelines.scoring import score, to_matrix
from pipelines.training import ranker_params

RESULTS = Path(__file__).parent / "results" / "ranker_sweep.json"
SAMPLED = {"subsample": 0.8, "colsample_bytree": 0.8}
VARIANTS: dict[str, dict[str, Any]] = {
    "the DAG's": {},
    "mean pairs, one per row": {
        "lambdarank_pair_method": "mean",
        "lambdarank_num_pair_per_sample": 1,
    },
    "rank:pairwise": {"objective": "rank:pairwise"},
    "depth 8": {"max_depth": 8},
    "learning rate 0.05, 400 trees": {"learning_rate": 0.05, "n_estimators": 400},
    "rows and columns sampled 0.8": SAMPLED,
    "columns sampled 0.8": {"colsample_bytree": 0.8},
    "linear gains (ndcg_exp_gain off)": {"ndcg_exp_gain": False},
    # smaller models: /rank's predict costs a fixed ~0.3 ms a call plus ~45 ns per tree
    # and row at depth 6 (make bench-predict)
    "100 trees": {"n_estimators": 100},
    "depth 4, 200 trees": {"max_depth": 4},
    "depth 5, 150 trees": {"max_depth": 5, "n_estimators": 150},
    "depth 4, 100 trees, learning rate 0.2": {
        "max_depth": 4,
        "n_estimators": 100,
        "learning_rate": 0.2,
    },
}


def fits(
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    columns: list[str],
    settings: Settings,
    change: dict[str, Any] | None = None,
    orders: int = 3,
    seeds: tuple[int, ...] = (0,),
) -> list[float]:
    """NDCG@10 on ``holdout`` of one fit per (seed, row order), the DAG's parameters with
    ``change``, on ``columns`` of ``train``."""
    import xgboost as xgb

    params = ranker_params(settings) | (change or {})
    rounds = params.pop("n_estimators")
    params.pop("num_workers")
    x, x_holdout = to_matrix(train, columns), to_matrix(holdout, columns)
    qid, label = train["query_id"].to_numpy(), train["label"].to_numpy()
    out = []
    for seed in seeds:
        for k in range(orders):
            order = np.lexsort((np.random.default_rng(k).random(len(train)), qid))
            data = xgb.DMatrix(x[order], label=label[order], qid=qid[order], missing=np.nan)
            booster = xgb.train(params | {"seed": seed, "nthread": 2}, data, rounds)
            scored = holdout.assign(score=score(booster, x_holdout))
            metrics = evaluation.per_query_metrics(scored, "score", settings.seed)
            out.append(evaluation.summarise(metrics)["ndcg@10"])
    return out


def diagnose(holdout: pd.DataFrame, scores: np.ndarray, seed: int) -> dict[str, float]:
    """Where a model's NDCG@10 goes: what ranking every positive first (in random order)
    would score, its NDCG@10 on the queries with one positive, and the mean ``als_score``
    of the negatives it ranks in the top 3 against that of the positives."""
    rng = np.random.default_rng(seed)
    positive = holdout["label"].to_numpy() > 0
    first = holdout.assign(score=positive + 0.5 * rng.random(len(holdout)))
    scored = holdout.assign(score=scores)
    per_query = evaluation.per_query_metrics(scored, "score", seed)
    n_positive = pd.Series(positive).groupby(holdout["query_id"].to_numpy()).sum()
    one = per_query["query_id"].map(n_positive).to_numpy() == 1
    rank = scored.groupby("query_id")["score"].rank(ascending=False)
    als = holdout["als_score"]
    return {
        "positives_first_ndcg@10": evaluation.summarise(
            evaluation.per_query_metrics(first, "score", seed)
        )["ndcg@10"],
        "one_positive_share": round(float(one.mean()), 4),
        "one_positive_ndcg@10": round(float(per_query.loc[one, "ndcg@10"].mean()), 4),
        "top3_negatives_als_score": round(float(als[~positive & (rank <= 3).to_numpy()].mean()), 4),
        "positives_als_score": round(float(als[positive].mean()), 4),
    }


def main() -> None:
    settings = get_settings()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--date", type=date.fromisoformat, help="the run's logical date")
    ap.add_argument("--orders", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=3, help="seeds of the sampling variants")
    args = ap.parse_args()
    day = args.date or catalog.SUMMARY.dates(settings)[-1]
    train = pd.read_parquet(catalog.TRAINING_SET.path(settings, date=day))
    holdout = pd.read_parquet(catalog.HOLDOUT.path(settings, date=day))
    popularity = evaluation.baseline_scores(holdout, settings.seed)["popularity"]
    scored = holdout.assign(score=popularity)
    baseline = evaluation.summarise(evaluation.per_query_metrics(scored, "score", settings.seed))
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "uv run python -m benchmarks.ranker_sweep",
        "machine": machine(),
        "run": str(day),
        "train": {"rows": len(train), "queries": int(train["query_id"].nunique())},
        "holdout_queries": int(holdout["query_id"].nunique()),
        "popularity_ndcg@10": baseline["ndcg@10"],
        "orders": args.orders,
        "variants": {},
    }
    print(f"run {day}: {result['train']}, popularity {baseline['ndcg@10']}")
    import xgboost as xgb

    model = xgb.Booster(model_file=str(catalog.CANDIDATE.path(settings, date=day)))
    scores = score(model, to_matrix(holdout, contracts.MODEL_FEATURES))
    result["dag_candidate"] = diagnose(holdout, scores, settings.seed)
    print(f"the DAG's candidate: {result['dag_candidate']}", flush=True)
    for name, change in VARIANTS.items():
        sampled = any(k in change for k in SAMPLED)
        seeds = tuple(range(args.seeds)) if sampled else (0,)
        ndcg = fits(train, holdout, contracts.MODEL_FEATURES, settings, change, args.orders, seeds)
        mean = round(float(np.mean(ndcg)), 4)
        result["variants"][name] = {
            "change": change,
            "seeds": list(seeds),
            "ndcg@10": ndcg,
            "mean": mean,
        }
        print(f"{name:36s} NDCG@10 {mean:.4f}  {ndcg}", flush=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
