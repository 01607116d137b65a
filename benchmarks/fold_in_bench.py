"""The fold-in of fresh user rows (``factors.fold_in_rows``'s Python work): one user at a
time (``factors._fold_in``, the reference) against many users at once
(``factors.fold_in_users``), on the same buckets of real events in the same run.

Needs a finished ``make run`` under ``CR_DATA_DIR`` (lake, id maps, factor snapshots). For
each snapshot with days before the next one, the events of the users active in between
are read with Spark and cut into ``factors.FOLD_IN_BUCKETS`` buckets as the task cuts
them; both paths then fold in every bucket in this process, timed by CPU time, the
per-user loop first. The item factors and content vectors are the snapshots' as saved
(the task's vectors also cover items first engaged between two snapshots). Writes
``benchmarks/results/fold_in.json``.

    uv run python -m benchmarks.fold_in_bench
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from rich.console import Console

from pipelines import catalog, contracts, factors
from pipelines.config import PROJECT_ROOT, get_settings

RESULTS = PROJECT_ROOT / "benchmarks" / "results" / "fold_in.json"
console = Console()


def per_user(user, item, rating, ts, day, y, v, settings, gram):
    """The fold-in as ``fold_in_rows`` ran it before ``fold_in_users``: a loop over the
    bucket's users, :func:`factors._fold_in` for each."""
    order = np.argsort(user, kind="stable")
    user, item, rating, ts = user[order], item[order], rating[order], ts[order]
    bounds = [*np.flatnonzero(user[1:] != user[:-1]) + 1, len(user)]
    users, days_out, states, start = [], [], [], 0
    for end in bounds:
        t = ts[start:end]
        days = [int(a) + 1 for a in np.unique(t[t >= day * 86_400] // 86_400)]
        states.append(
            factors._fold_in(item[start:end], rating[start:end], t, days, y, v, settings, gram)
        )
        users.append(np.full(len(days), user[start]))
        days_out.append(np.array(days, dtype=np.int64))
        start = end
    return np.concatenate(users), np.concatenate(days_out), np.concatenate(states)


def buckets_of(spark, events, day: int, until: int, settings):
    """The buckets ``fold_in_rows`` hands its Python function, as arrays."""
    from pyspark.sql import functions as F

    engaged = events.where(F.col("rating") > 0).where(F.col("timestamp") < (until - 1) * 86_400)
    active = engaged.where(F.col("timestamp") >= day * 86_400).select("user_id").distinct()
    history = engaged.join(active, "user_id", "left_semi").withColumn(
        "_bucket", F.pmod(F.xxhash64("user_id"), F.lit(factors.FOLD_IN_BUCKETS))
    )
    frame = history.select("_bucket", "user_id", "item_id", "rating", "timestamp").toPandas()
    for _, rows in frame.groupby("_bucket"):
        yield (
            rows["user_id"].to_numpy("int64"),
            rows["item_id"].to_numpy("int64"),
            rows["rating"].to_numpy("float64"),
            rows["timestamp"].to_numpy("int64"),
        )


def main(argv: list[str] | None = None) -> None:
    import pandas as pd

    from pipelines.ingest import lake_days, lake_events
    from pipelines.spark import get_spark

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    settings = get_settings()
    spark = get_spark(settings)
    events = lake_events(spark, settings, lake_days(settings)[-1]).cache()
    items = pd.read_parquet(catalog.FACTOR_TABLE.path(settings, kind="item"))
    days = sorted(items[factors.PARTITION].unique())
    totals = {"per_user_cpu_s": 0.0, "batched_cpu_s": 0.0, "user_days": 0, "events": 0}
    snapshots = []
    for day, until in zip(days, days[1:], strict=False):
        snap = items[items[factors.PARTITION] == day]
        y = factors._dense(snap, "item_id", contracts.ITEM_FACTORS)
        v = factors._dense(snap, "item_id", contracts.ITEM_CONTENT)
        if np.isnan(v).all():
            v = None
        gram = np.nan_to_num(y).T @ np.nan_to_num(y)
        row = {"day": int(day), "until": int(until), "per_user_cpu_s": 0.0, "batched_cpu_s": 0.0}
        row |= {"user_days": 0, "events": 0, "max_abs_diff": 0.0}
        for arrays in buckets_of(spark, events, int(day), int(until), settings):
            timed = {}
            for name, fold in (("per_user", per_user), ("batched", factors.fold_in_users)):
                started = time.process_time()
                timed[name] = fold(*arrays, int(day), y, v, settings, gram)
                row[f"{name}_cpu_s"] += time.process_time() - started
            (u0, d0, s0), (u1, d1, s1) = timed["per_user"], timed["batched"]
            assert (u0 == u1).all() and (d0 == d1).all(), "the two paths' rows differ"
            np.testing.assert_allclose(s1, s0, rtol=1e-7, atol=1e-9, equal_nan=True)
            diff = np.abs(np.nan_to_num(s1) - np.nan_to_num(s0)).max() if len(s0) else 0.0
            row["max_abs_diff"] = max(row["max_abs_diff"], float(diff))
            row["user_days"] += len(u0)
            row["events"] += len(arrays[0])
        for key in totals:
            totals[key] += row[key]
        row |= {k: round(row[k], 3) for k in ("per_user_cpu_s", "batched_cpu_s")}
        snapshots.append(row)
        console.print(row)
    report = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "make bench-fold-in",
        "dataset": settings.dataset,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "snapshots": snapshots,
        "total": {k: round(v, 3) if isinstance(v, float) else v for k, v in totals.items()},
        "per_user_over_batched": round(totals["per_user_cpu_s"] / totals["batched_cpu_s"], 2),
        "per_user_day_us": {
            "per_user": round(1e6 * totals["per_user_cpu_s"] / max(1, totals["user_days"]), 1),
            "batched": round(1e6 * totals["batched_cpu_s"] / max(1, totals["user_days"]), 1),
        },
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    console.print(report["total"], report["per_user_over_batched"], report["per_user_day_us"])


if __name__ == "__main__":
    main()
