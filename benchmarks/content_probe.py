"""Probe the content signal: does any user vector make ``content_sim`` worth its place?

The model's ``content_sim`` is the cosine of an item's content vector (TF-IDF of its title
and topics, reduced by PCA) with the user's: the mean of the vectors of the items it engaged
with, weighted by ``0.5 ** (age / content_half_life_days)``. On ML-1M every rating counts as
an engagement, a one-star one too. This probe recomputes, per query, the user's vector from
its events before the query day (the latest rating and time per item) in three ways:

- ``plain``: the model's own definition (its correlation with ``content_sim`` is printed);
- ``signed``: each weight times (rating − the mean of those ratings), so disliked items
  push the vector away;
- ``rated``: each weight times the rating.

It then fits single-node XGBoost with the DAG's parameters on three row orders within the
queries (``ranker_sweep.fits``) with ``content_sim`` replaced by each, and without any.

``uv run python -m benchmarks.content_probe [--date YYYY-MM-DD]`` (default: the newest run
under ``CR_DATA_DIR``) prints one line per feature set and writes
``benchmarks/results/content_probe.json``. It holds the lake in pandas: meant for ML-1M.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import ranker_sweep
from benchmarks.fold_in_probe import load_run
from benchmarks.serve_bench import machine
from pipelines import catalog, contracts, factors
from pipelines.config import Settings, get_settings

RESULTS = Path(__file__).parent / "results" / "content_probe.json"
WAYS = ("plain", "signed", "rated")


def item_vectors(settings: Settings, n_items: int) -> np.ndarray:
    """The (n_items, CONTENT_DIM) content vectors of the newest snapshot, NaN where none
    (they are fit once on the whole catalogue, so every snapshot holds the same)."""
    table = pd.read_parquet(catalog.FACTOR_TABLE.path(settings, kind="item"))
    day = table[factors.PARTITION].astype("int64")  # read back as a category
    table = table[day == day.max()]
    table = table.dropna(subset=contracts.ITEM_CONTENT)
    out = np.full((n_items, contracts.CONTENT_DIM), np.nan)
    out[table["item_id"].to_numpy("int64")] = table[contracts.ITEM_CONTENT].to_numpy("float64")
    return out


def user_vectors(history: pd.DataFrame, day: int, vectors: np.ndarray, half_life: float):
    """The user's vector before ``day`` in each of ``WAYS`` (NaN without an engaged item
    that has a vector). ``history``: the user's engaged events, time ordered."""
    before = history[history["timestamp"] < day * 86_400]
    latest = before.groupby("item_id").agg(r=("rating", "last"), t=("timestamp", "max"))
    v = vectors[latest.index.to_numpy("int64")]
    keep = ~np.isnan(v).any(axis=1)
    if not keep.any():
        return {way: np.full(contracts.CONTENT_DIM, np.nan) for way in WAYS}
    v, r, t = v[keep], latest["r"].to_numpy()[keep], latest["t"].to_numpy()[keep]
    w = 0.5 ** ((day * 86_400 - t) / 86_400 / half_life)
    return {
        "plain": (w[:, None] * v).sum(axis=0) / w.sum(),
        "signed": ((w * (r - r.mean()))[:, None] * v).sum(axis=0) / w.sum(),
        "rated": ((w * r)[:, None] * v).sum(axis=0) / (w * r).sum(),
    }


def with_probes(frame, events, vectors, settings: Settings) -> pd.DataFrame:
    """``frame`` with a ``content_<way>`` cosine per way, from each query's user vector."""
    histories = dict(tuple(events.sort_values("timestamp").groupby("user_id")))
    queries = frame.drop_duplicates("query_id")[["query_id", "user_id", "day"]]
    per_query = {
        q: user_vectors(
            histories.get(u, events.iloc[:0]), int(d), vectors, settings.content_half_life_days
        )
        for q, u, d in queries.itertuples(index=False)
    }
    items = vectors[np.minimum(frame["item_id"].to_numpy("int64"), len(vectors) - 1)]
    out = frame.copy()
    for way in WAYS:
        users = np.stack([per_query[q][way] for q in frame["query_id"]])
        out[f"content_{way}"] = contracts.cosine_values(users, items)
    return out


def main() -> None:
    settings = get_settings()
    day, events, train, holdout, n_items = load_run(settings, __doc__)
    vectors = item_vectors(settings, n_items)
    train = with_probes(train, events, vectors, settings)
    holdout = with_probes(holdout, events, vectors, settings)
    model = list(contracts.MODEL_FEATURES)
    without = [c for c in model if c != "content_sim"]
    feature_sets = {"the model's features": model, "without content_sim": without}
    feature_sets |= {f"content_sim as {way}": [*without, f"content_{way}"] for way in WAYS}
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "uv run python -m benchmarks.content_probe",
        "machine": machine(),
        "run": str(day),
        "plain_vs_content_sim_correlation": round(
            float(train[["content_plain", "content_sim"]].corr().iloc[0, 1]), 4
        ),
        "ndcg@10": {},
    }
    print(f"plain against content_sim: correlation {result['plain_vs_content_sim_correlation']}")
    for name, columns in feature_sets.items():
        scores = ranker_sweep.fits(train, holdout, columns, settings, orders=3)
        mean = round(float(np.mean(scores)), 4)
        result["ndcg@10"][name] = {"mean": mean, "orders": [round(v, 4) for v in scores]}
        print(f"{name:28s} NDCG@10 {mean:.4f}  {scores}", flush=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
