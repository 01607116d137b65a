"""Probe a signal before building it: the ALS user factor folded in at query time.

The model's ``als_score`` is the dot product of the user's and the item's factors from the
snapshot a query joins, and that snapshot's user factor was fit on events up to a grid step
(180 days on ML-1M) before the query. Folding in solves the user's factor again from the
snapshot's item factors and the user's whole history before the query day, with Spark's
implicit-feedback normal equations (the same ``alpha`` and ``regParam``)::

    (YᵀY + Σ c_j y_j y_jᵀ + λ n I) x = Σ (1 + c_j) y_j,   c_j = alpha · rating_j

This probe adds ``fold_in_score`` (x · item factor) and ``profile_cos`` (the cosine of
the item's factor with the mean of the user's engaged items' factors) to a finished run's
training set and holdout. It fits single-node XGBoost with the DAG's parameters on three
row orders within the queries (the order alone moves NDCG@10 by about ±0.003) and prints
the mean NDCG@10 of each feature set.

``uv run python -m benchmarks.fold_in_probe [--date YYYY-MM-DD]`` (default: the newest
run under ``CR_DATA_DIR``). It holds the lake in pandas: meant for ML-1M-sized data.
"""

from __future__ import annotations

import argparse
from datetime import date

import numpy as np
import pandas as pd

from benchmarks import ranker_sweep
from pipelines import catalog, contracts, factors, ids
from pipelines.config import Settings, get_settings
from pipelines.ingest import lake_days, read_partitions

ORDERS = 3


def engaged_events(settings: Settings) -> pd.DataFrame:
    """Every engaged event of the lake (rating > 0) in internal ids, with its time and day."""
    raw = read_partitions(settings, lake_days(settings))
    users = ids.read_mapping(catalog.USER_IDS.path(settings)).set_index("external_id")
    items = ids.read_mapping(catalog.ITEM_IDS.path(settings)).set_index("external_id")
    raw = raw[raw["rating"] > 0]
    return pd.DataFrame(
        {
            "user_id": raw["user_id"].astype(str).map(users["internal_id"]).to_numpy("int64"),
            "item_id": raw["item_id"].astype(str).map(items["internal_id"]).to_numpy("int64"),
            "rating": raw["rating"].to_numpy("float64"),
            "timestamp": raw["timestamp"].to_numpy("int64"),
            "day": (raw["timestamp"] // 86_400).to_numpy("int64"),
        }
    )


def item_factors(settings: Settings, n_items: int) -> dict[int, np.ndarray]:
    """Per snapshot day, an (n_items, rank) array of item factors, NaN where none."""
    table = pd.read_parquet(catalog.FACTOR_TABLE.path(settings, kind="item"))
    out = {}
    for day, rows in table.dropna(subset=contracts.ITEM_FACTORS).groupby(
        factors.PARTITION, observed=True
    ):
        matrix = np.full((n_items, contracts.ALS_RANK), np.nan)
        matrix[rows["item_id"].to_numpy()] = rows[contracts.ITEM_FACTORS].to_numpy("float64")
        out[int(day)] = matrix
    return out


def _gram(factors_: np.ndarray) -> np.ndarray:
    known = factors_[~np.isnan(factors_).any(axis=1)]
    return known.T @ known


def with_fold_in(
    frame: pd.DataFrame, events: pd.DataFrame, snapshots: dict[int, np.ndarray], s: Settings
) -> pd.DataFrame:
    """``frame`` (user_id, item_id, day per row) with ``fold_in_score`` and ``profile_cos``."""
    fold_in = np.full(len(frame), np.nan)
    cosine = np.full(len(frame), np.nan)
    days = np.array(sorted(snapshots))
    gram = {d: _gram(m) for d, m in snapshots.items()}  # YᵀY over the items with factors
    history = dict(tuple(events.groupby("user_id")))
    for (user, day), rows in frame.groupby(["user_id", "day"]).indices.items():
        at = days[days <= day]
        if not at.size or user not in history:
            continue
        snap = int(at[-1])
        before = history[user]
        before = before[before["day"] < day].groupby("item_id")["rating"].max()
        y = snapshots[snap][before.index.to_numpy()]
        known = ~np.isnan(y).any(axis=1)
        if not known.any():
            continue
        y, c = y[known], s.als_alpha * before.to_numpy()[known]
        a = gram[snap] + (y * c[:, None]).T @ y + s.als_reg * len(y) * np.eye(y.shape[1])
        x = np.linalg.solve(a, ((1 + c)[:, None] * y).sum(axis=0))
        candidates = snapshots[snap][frame["item_id"].to_numpy()[rows]]
        profile = y.mean(axis=0)
        fold_in[rows] = candidates @ x
        norms = np.linalg.norm(candidates, axis=1) * np.linalg.norm(profile)
        cosine[rows] = candidates @ profile / np.where(norms > 0, norms, np.nan)
    return frame.assign(fold_in_score=fold_in, profile_cos=cosine)


def mean_ndcg(train: pd.DataFrame, holdout: pd.DataFrame, columns: list[str], s: Settings):
    """Mean NDCG@10 of the DAG's parameters on three row orders, and each order's."""
    scores = ranker_sweep.fits(train, holdout, columns, s, orders=ORDERS)
    return round(float(np.mean(scores)), 4), [round(v, 4) for v in scores]


def load_run(settings: Settings, description: str | None):
    """A probe's inputs: the run (``--date``, default the newest), the lake's engaged events,
    the run's training set and holdout, and how many item ids they span."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--date", type=date.fromisoformat, help="the run's logical date")
    day = ap.parse_args().date or catalog.SUMMARY.dates(settings)[-1]
    events = engaged_events(settings)
    train = pd.read_parquet(catalog.TRAINING_SET.path(settings, date=day))
    holdout = pd.read_parquet(catalog.HOLDOUT.path(settings, date=day))
    n_items = 1 + int(
        max(events["item_id"].max(), train["item_id"].max(), holdout["item_id"].max())
    )
    return day, events, train, holdout, n_items


def main() -> None:
    settings = get_settings()
    _, events, train, holdout, n_items = load_run(settings, __doc__)
    snapshots = item_factors(settings, n_items)
    train = with_fold_in(train, events, snapshots, settings)
    holdout = with_fold_in(holdout, events, snapshots, settings)
    model = list(contracts.MODEL_FEATURES)
    without_als = [c for c in model if c != "als_score"]
    feature_sets = {
        "the model's features": model,
        "+ fold_in_score": [*model, "fold_in_score"],
        "+ fold_in_score, profile_cos": [*model, "fold_in_score", "profile_cos"],
        "fold_in_score in place of als_score": [*without_als, "fold_in_score"],
    }
    for name, columns in feature_sets.items():
        print(f"{name}: NDCG@10 {mean_ndcg(train, holdout, columns, settings)}", flush=True)


if __name__ == "__main__":
    main()
