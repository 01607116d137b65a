"""Offline evaluation on the time-split holdout: NDCG@10, MAP@10 and Recall@10 per query."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines import contracts
from pipelines.ids import to_external

K = 10
METRICS = ("ndcg@10", "map@10", "recall@10")


def rank_order(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices by descending score, ties broken at random (never by candidate order)."""
    return np.lexsort((rng.random(len(scores)), -np.nan_to_num(scores, nan=-np.inf)))


def query_metrics(labels: np.ndarray, order: np.ndarray, k: int = K) -> dict[str, float]:
    """Metrics of one query. Gains are graded (2^label - 1); MAP and recall count label > 0."""
    ranked = labels[order]
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    gains = 2.0 ** ranked[:k] - 1.0
    ideal = 2.0 ** np.sort(labels)[::-1][:k] - 1.0
    idcg = float(ideal @ discounts[: ideal.size])
    ndcg = float(gains @ discounts[: gains.size]) / idcg if idcg > 0 else 0.0
    relevant = ranked > 0
    n_relevant = int((labels > 0).sum())
    hits = relevant[:k]
    precision_at = np.cumsum(hits) / np.arange(1, hits.size + 1)
    ap = float((precision_at * hits).sum() / min(n_relevant, k)) if n_relevant else 0.0
    recall = float(hits.sum() / n_relevant) if n_relevant else 0.0
    return {"ndcg@10": ndcg, "map@10": ap, "recall@10": recall}


def per_query_metrics(frame: pd.DataFrame, score_col: str, seed: int) -> pd.DataFrame:
    """One row of metrics per query (``query_id``, ``label``, ``score_col``)."""
    rng = np.random.default_rng(seed)
    rows = []
    for qid, group in frame.groupby("query_id", sort=True):
        labels = group["label"].to_numpy(dtype=float)
        order = rank_order(group[score_col].to_numpy(dtype=float), rng)
        rows.append({"query_id": qid, **query_metrics(labels, order)})
    return pd.DataFrame(rows)


def summarise(per_query: pd.DataFrame) -> dict[str, float]:
    """Mean of each metric over queries, plus the number of queries."""
    out = {m: round(float(per_query[m].mean()), 4) for m in METRICS}
    out["queries"] = int(len(per_query))
    return out


def baseline_scores(holdout: pd.DataFrame, seed: int) -> dict[str, np.ndarray]:
    """Random scores, and trailing-window popularity as of the query day."""
    rng = np.random.default_rng(seed)
    popularity = holdout[contracts.POPULARITY_FEATURE].astype(float).fillna(-1.0).to_numpy()
    return {"random": rng.random(len(holdout)), "popularity": popularity}


NO_TRUTH = -1.0  # below every probability: an unshown candidate ranks last in the oracle


def external_keys(holdout: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """``holdout``'s (user_id, item_id, day) with the data set's own (external) ids, through
    the id maps ``users`` and ``items``: the keys of the data set's truth."""
    return pd.DataFrame(
        {
            "user_id": to_external(holdout["user_id"], users).to_numpy(),
            "item_id": to_external(holdout["item_id"], items).to_numpy(),
            "day": holdout["day"].astype("int64").to_numpy(),
        }
    )


def oracle_scores(
    holdout: pd.DataFrame, truth: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame
) -> np.ndarray:
    """The planted engagement probability of each holdout row: the oracle ranker's scores.

    ``holdout`` has internal ``user_id``, ``item_id`` and ``day``; ``truth`` has external ids,
    ``day`` and ``p_engage`` (:func:`pipelines.data.truth_by_day`); ``users`` and ``items`` are
    the id maps. A candidate the user was never shown that day (a sampled negative) has no
    truth row and scores :data:`NO_TRUTH`: the planted model only speaks for impressions, and
    such a candidate is labelled 0, so the oracle knows to put it last.
    """
    keys = ["user_id", "item_id", "day"]
    rows = external_keys(holdout, users, items)
    known = truth[[*keys, "p_engage"]].astype({"user_id": str, "item_id": str, "day": "int64"})
    joined = rows.merge(known, on=keys, how="left", validate="many_to_one")
    return joined["p_engage"].astype(float).fillna(NO_TRUTH).to_numpy()


def query_slices(
    holdout: pd.DataFrame, cold_max: int, heavy_min: int, genres: list[str]
) -> pd.DataFrame:
    """Per query: the slices it belongs to, from the features the user had that day.

    ``cold`` = fewer than ``cold_max`` past ratings (or none known), ``heavy`` = at least
    ``heavy_min``; ``genre:<name>`` = the user's strongest genre, for the top genres.
    """
    first = holdout.groupby("query_id", sort=True).first()
    past = first["user_cnt_all"].astype(float).fillna(0.0)
    aff = first[contracts.USER_AFFINITY].astype(float).fillna(0.0).to_numpy()
    top_slot = np.where(aff.sum(axis=1) > 0, aff.argmax(axis=1), -1)
    out = pd.DataFrame(index=first.index)
    out["cold"] = past < cold_max
    out["heavy"] = past >= heavy_min
    for slot, genre in enumerate(genres):
        out[f"genre:{genre}"] = top_slot == slot
    return out
