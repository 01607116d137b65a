"""Ranking queries with sampled negatives, joined point-in-time to Feast features.

A query is (user, day). Its candidates are the items the user rated that day
(graded relevance = the rating) plus sampled negatives: items already in the
catalogue before that day that the user never rated (relevance 0).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime

import numpy as np
import pandas as pd

from pipelines.features import EPOCH, day_number


def sample_negatives(
    rated: set[int], pool: np.ndarray, k: int, rng: np.random.Generator
) -> np.ndarray:
    """Up to ``k`` distinct items of ``pool`` that are not in ``rated``."""
    if pool.size <= 4 * (k + len(rated)):
        allowed = pool[~np.isin(pool, list(rated))]
        return rng.choice(allowed, size=min(k, allowed.size), replace=False).astype(np.int64)
    picked: dict[int, None] = {}
    while len(picked) < k:  # rejection sampling: the pool is much larger than what is excluded
        for i in rng.choice(pool, size=2 * k, replace=False).tolist():
            if i not in rated:
                picked.setdefault(i)
    return np.fromiter(picked, dtype=np.int64)[:k]


def build_queries(
    events: pd.DataFrame,
    first_day: int,
    last_day: int,
    negatives: int,
    max_positives: int,
    seed: int,
) -> pd.DataFrame:
    """Candidates for every (user, day) query with ``first_day <= day <= last_day``.

    ``events`` holds every interaction (internal ids, ``timestamp``), so that a
    negative is never an item the user rated at any time, and an item counts as
    in the catalogue on day d only if someone rated it before d.
    Returns user_id, item_id, day, label, query_id, event_timestamp.
    """
    rng = np.random.default_rng(seed)
    days = (events["timestamp"] // 86_400).astype("int64")
    first_seen = events.assign(day=days).groupby("item_id")["day"].min().sort_values()
    catalogue = first_seen.index.to_numpy(dtype=np.int64)
    catalogue_days = first_seen.to_numpy()
    rated_by_user = events.groupby("user_id")["item_id"].agg(set).to_dict()

    window = events.assign(day=days)
    window = window[(window["day"] >= first_day) & (window["day"] <= last_day)]
    window = window.sort_values(["user_id", "day", "timestamp", "item_id"])
    parts: list[pd.DataFrame] = []
    for (user, day), group in window.groupby(["user_id", "day"], sort=True):
        positives = group.drop_duplicates("item_id", keep="last")  # the day's latest rating
        if len(positives) > max_positives:
            positives = positives.sample(n=max_positives, random_state=int(rng.integers(2**31)))
        pool = catalogue[: np.searchsorted(catalogue_days, day, side="left")]
        neg = sample_negatives(rated_by_user[user], pool, negatives, rng) if pool.size else []
        parts.append(
            pd.DataFrame(
                {
                    "user_id": user,
                    "item_id": np.concatenate([positives["item_id"].to_numpy(), neg]),
                    "day": day,
                    "label": np.concatenate([positives["rating"].to_numpy(), np.zeros(len(neg))]),
                }
            )
        )
    if not parts:
        return pd.DataFrame(
            columns=["user_id", "item_id", "day", "label", "query_id", "event_timestamp"]
        )
    out = pd.concat(parts, ignore_index=True)
    out["query_id"] = out.groupby(["user_id", "day"], sort=True).ngroup().astype("int64")
    out["event_timestamp"] = pd.to_datetime(out["day"] * 86_400, unit="s", utc=True)
    return out.astype({"user_id": "int64", "item_id": "int64", "label": "float64"})


def dataset_hash(frame: pd.DataFrame) -> str:
    """A content hash of a training set, for lineage."""
    hashed = pd.util.hash_pandas_object(frame.reset_index(drop=True), index=False)
    return hashlib.sha256(hashed.to_numpy().tobytes()).hexdigest()[:16]


def day_bounds(logical_date: date, holdout_days: int, train_days: int) -> dict[str, int]:
    """Train on [train_start, train_end], hold out (train_end, logical_date] (day numbers)."""
    last = day_number(logical_date)
    train_end = last - holdout_days
    return {"train_start": train_end - train_days + 1, "train_end": train_end, "holdout_end": last}


def day_to_date(day: int) -> date:
    return EPOCH + pd.Timedelta(days=int(day)).to_pytimedelta()


def utc_midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def drop_unpairable_queries(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The rows of queries that can form a training pair, and how many queries were dropped.

    A ranker learns only from two candidates of one query with different labels: a pair
    exists iff the query (``query_id``) has two candidates with different ``label``s.
    A query with a single candidate, or whose candidates all share one label (no
    positive, or only equal positives), teaches nothing, so it is dropped and counted
    rather than failed on. Null labels never make a pair. Kept rows keep order and index.
    """
    labels = frame.groupby("query_id", sort=False, dropna=False)["label"].transform("nunique")
    pairable = labels.ge(2)
    dropped = frame.loc[~pairable, "query_id"].nunique(dropna=False)
    return frame[pairable], int(dropped)
