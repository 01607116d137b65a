"""Training-serving skew and feature drift: the checks that compare what was served,
what was trained on, and what the data looks like now."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pipelines import contracts

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


def psi(expected: np.ndarray, actual: np.ndarray, bins: int = 10) -> float:
    """Population stability index of ``actual`` against ``expected`` (NaN is its own bin).

    Bins are ``expected``'s quantiles; empty bins get a small floor so the log is finite.
    """
    expected = np.asarray(expected, dtype=float)
    actual = np.asarray(actual, dtype=float)
    finite = expected[np.isfinite(expected)]
    if finite.size == 0 or actual.size == 0:
        return 0.0
    edges = np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1)))
    inner = edges[1:-1]

    def shares(values: np.ndarray) -> np.ndarray:
        nan = np.isnan(values)
        counts = np.bincount(
            np.searchsorted(inner, values[~nan], side="right"), minlength=len(inner) + 1
        )
        counts = np.append(counts, nan.sum()).astype(float)
        return np.maximum(counts / counts.sum(), 1e-4)

    e, a = shares(expected), shares(actual)
    return float(np.sum((a - e) * np.log(a / e)))


def drift_report(
    reference: pd.DataFrame, current: pd.DataFrame, features: list[str]
) -> dict[str, float]:
    """PSI per feature of ``current`` against ``reference``."""
    return {f: round(psi(reference[f].to_numpy(), current[f].to_numpy()), 4) for f in features}


def latest_per_key(frame: DataFrame, key: list[str], features: list[str]) -> DataFrame:
    """One row per ``key``: its features on its latest ``day`` (a query repeats its user's
    row for every candidate, and a few very active users would otherwise be the sample)."""
    from pyspark.sql import functions as F

    newest = F.max_by(F.struct(*features), "day").alias("_row")
    return frame.groupBy(*key).agg(newest).select(*key, "_row.*")


def bounded_sample(
    frame: DataFrame, key: list[str], rows: int, max_rows: int, seed: int
) -> pd.DataFrame:
    """``frame`` (of ``rows`` rows) as pandas, or about ``max_rows`` of its rows, chosen by a
    hash of ``key``: the driver holds a bounded sample whatever the size of the data, and
    the same data gives the same sample however Spark partitions it."""
    from pyspark.sql import functions as F

    if rows > max_rows:
        bucket = F.pmod(F.xxhash64(*key, F.lit(seed)), F.lit(rows))
        frame = frame.where(bucket < max_rows)
    return frame.toPandas()


def drift_inputs(
    train: DataFrame, holdout: DataFrame, drift_days: int, max_rows: int, seed: int
) -> tuple[dict[str, float], dict[str, int]]:
    """PSI of every monitored feature, the training window against the holdout's latest
    ``drift_days``, with one row per user (their latest) and per item-day; and how many
    users each side had. The de-duplication runs in Spark, and PSI on a hash sample of
    about ``max_rows`` rows per side (:func:`bounded_sample`)."""
    from pyspark.sql import functions as F

    last_day = holdout.agg(F.max("day")).first()[0]
    latest = holdout if last_day is None else holdout.where(F.col("day") > last_day - drift_days)
    drift: dict[str, float] = {}
    users: dict[str, int] = {}
    for key, features in (
        (["user_id"], contracts.USER_FEATURES),
        (["item_id", "day"], contracts.ITEM_FEATURES),
    ):
        sides = []
        for name, frame in (("train", train), ("latest", latest)):
            rows = latest_per_key(frame, key, features).cache()
            count = rows.count()
            if key == ["user_id"]:
                users[f"{name}_users"] = count
            sides.append(bounded_sample(rows, key, count, max_rows, seed))
            rows.unpersist()
        drift |= drift_report(*sides, features)
    return drift, users


def read_served(log_dir: Path, max_rows: int) -> pd.DataFrame:
    """The newest ``max_rows`` feature rows the server logged (JSON lines, one row each)."""
    chunks: list[list[dict]] = []
    total = 0
    newest_first = sorted(
        log_dir.glob("served*.jsonl*"), key=lambda p: p.stat().st_mtime, reverse=True
    )
    for path in newest_first:
        with path.open() as fh:
            chunks.append([json.loads(line) for line in fh if line.strip()])
        total += len(chunks[-1])
        if total >= max_rows:
            break
    rows = [row for chunk in reversed(chunks) for row in chunk]  # oldest first
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows).tail(max_rows).reset_index(drop=True)
    frame["event_timestamp"] = pd.to_datetime(frame["feature_time"], unit="s", utc=True)
    return frame


def skew_report(
    served: pd.DataFrame, offline: pd.DataFrame, features: list[str], rtol: float = 1e-4
) -> dict:
    """Per-feature share of rows where the served value differs from the offline one for the
    same keys and time (NaN against a value counts as a mismatch)."""
    rates = {}
    for f in features:
        s = served[f].to_numpy(dtype=float)
        o = offline[f].to_numpy(dtype=float)
        same = np.isclose(s, o, rtol=rtol, atol=1e-6) | (np.isnan(s) & np.isnan(o))
        rates[f] = round(float(1.0 - same.mean()), 4) if len(same) else 0.0
    return {"rows": int(len(served)), "mismatch_rate": rates}


def monitoring_checks(
    skew: dict | None,
    drift: dict[str, float] | None,
    max_mismatch: float,
    max_psi: float,
    drift_users: int | None = None,
    min_drift_users: int = 0,
) -> list[dict]:
    """Gate checks: skew and drift above their thresholds block promotion, naming the feature.

    Drift measured on fewer than ``min_drift_users`` recent users is too noisy to
    gate on (the PSI of a handful of users is large by chance): it is reported, not checked.
    """
    checks = []
    if skew and skew.get("rows"):
        worst = max(skew["mismatch_rate"].items(), key=lambda kv: kv[1])
        checks.append(
            {
                "check": f"training-serving skew <= {max_mismatch} per feature",
                "passed": worst[1] <= max_mismatch,
                "detail": f"worst {worst[0]}: {worst[1]:.2%} of {skew['rows']} served rows differ",
            }
        )
    if drift and (drift_users is None or drift_users >= min_drift_users):
        worst = max(drift.items(), key=lambda kv: kv[1])
        checks.append(
            {
                "check": f"feature drift PSI <= {max_psi}",
                "passed": worst[1] <= max_psi,
                "detail": f"worst {worst[0]}: PSI {worst[1]:.3f}",
            }
        )
    return checks


MONITORED_FEATURES = contracts.USER_FEATURES + contracts.ITEM_FEATURES
