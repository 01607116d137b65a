"""The training set's point-in-time join: Feast's file store (the old path) against the
Spark as-of join, on the same entity rows in the same run.

Needs a finished ``make run`` (lake, id maps, feature tables, Feast registry) under
``CR_DATA_DIR``. Writes ``benchmarks/results/training_set.json``.

    uv run python -m benchmarks.training_set_bench [--logical-date YYYY-MM-DD]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console

from pipelines import catalog, contracts, resources
from pipelines.config import PROJECT_ROOT, get_settings
from pipelines.data import dataset_facts

RESULTS = PROJECT_ROOT / "benchmarks" / "results" / "training_set.json"
console = Console()


@contextmanager
def watch(result: dict[str, Any]) -> Iterator[None]:
    """Wall time, and peak PSS and CPU of this driver and its Spark JVM, into ``result``."""
    started = time.perf_counter()
    with resources.watch() as cost:
        yield
    result["wall_s"] = round(time.perf_counter() - started, 2)
    result |= cost


def entity_rows(spark, settings, logical_date: date):
    """The training set's entity rows as the task builds them (train and holdout queries)."""
    from pyspark.sql import functions as F

    from pipelines import training_set as ts
    from pipelines.ingest import lake_events

    queries = ts.queries_for(
        spark, lake_events(spark, settings, logical_date), logical_date, settings
    )
    train, holdout = queries["train"], queries["holdout"]
    return (
        train.unionByName(holdout)
        .select("user_id", "item_id", "event_timestamp", "label", "query_id")
        .withColumn("_row", F.monotonically_increasing_id())
    )


@contextmanager
def unpartitioned_store(spark, root: Path) -> Iterator[Any]:
    """Settings for a Feast store under ``root`` whose feature tables are one parquet file
    each, as the old path had them. Feast's Dask store plans a task per file of a table
    partitioned by snapshot date, and on ML-1M's thousand days that alone ran for more
    than 10 minutes: the baseline is the old path as it was, not made slower."""
    from pipelines import factors, feature_store
    from pipelines.features import SNAPSHOT_PARTITION

    settings = get_settings()
    tables = [
        (entry, kind, partition)
        for entry, partition in (
            (catalog.FEATURE_TABLE, SNAPSHOT_PARTITION),
            (catalog.FACTOR_TABLE, factors.PARTITION),
        )
        for kind in ("user", "item")
    ]
    for entry, kind, partition in tables:
        table = spark.read.parquet(str(entry.path(settings, kind=kind))).drop(partition)
        table.coalesce(1).write.parquet(str(entry.path(root, kind=kind)))
    # The repo's sources are relative to the data directory, so a store opened on ``root``
    # reads the copies (its registry and online store are under ``root`` too, locally).
    moved = settings.model_copy(update={"data_dir": root})
    try:
        feature_store.apply(moved)
        yield moved
    finally:
        settings.export_env()  # open_store exported the moved data directory


def feast_file_store(settings, entity_df: pd.DataFrame, chunk_rows: int = 20_000) -> pd.DataFrame:
    """The old path: Feast's ``get_historical_features`` on the file (Dask) store in chunks
    of 20k rows, each (user, timestamp) row offset by a distinct millisecond so Feast keeps
    them all (its workaround, as it was)."""
    from pipelines.feature_store import open_store

    store = open_store(settings)
    service = store.get_feature_service(contracts.FEATURE_SERVICE)
    offset = entity_df.groupby(["user_id", "event_timestamp"]).cumcount()
    keyed = entity_df.assign(
        event_timestamp=entity_df["event_timestamp"] + pd.to_timedelta(offset, unit="ms")
    )
    parts = []
    for start in range(0, len(keyed), chunk_rows):
        chunk = keyed.iloc[start : start + chunk_rows]
        parts.append(store.get_historical_features(entity_df=chunk, features=service).to_df())
    return pd.concat(parts, ignore_index=True)


def run(logical_date: date, out: Path) -> dict[str, Any]:
    from pipelines import feature_store
    from pipelines.spark import get_spark

    settings = get_settings()
    spark = get_spark(settings)
    scratch = Path(tempfile.mkdtemp(prefix="ts-bench-", dir=settings.data_dir))
    try:
        entities_path = str(scratch / "entities")
        entity_rows(spark, settings, logical_date).write.parquet(entities_path)
        entities = spark.read.parquet(entities_path)
        n_rows = entities.count()
        console.print(f"{n_rows:,} entity rows for {logical_date}")

        spark_result: dict[str, Any] = {}
        with watch(spark_result):
            joined = feature_store.historical_features(spark, settings, entities)
            joined.write.parquet(str(scratch / "spark_join"))
        spark_rows = spark.read.parquet(str(scratch / "spark_join")).count()
        spark_result["rows_out"] = spark_rows
        console.print(f"spark as-of join: {spark_result}")

        entity_df = pd.read_parquet(entities_path)
        entity_df["event_timestamp"] = pd.to_datetime(entity_df["event_timestamp"], utc=True)
        file_result: dict[str, Any] = {}
        with (
            unpartitioned_store(spark, scratch / "file_store") as file_settings,
            watch(file_result),
        ):
            got = feast_file_store(file_settings, entity_df)
        file_result["rows_out"] = len(got)
        file_result["rows_lost"] = int(n_rows - got["_row"].nunique())
        console.print(f"feast file store: {file_result}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    report = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "dataset": dataset_facts(settings).name,
        "logical_date": logical_date.isoformat(),
        "entity_rows": n_rows,
        "spark_as_of_join": spark_result,
        "feast_file_store": file_result,
        "speedup": round(file_result["wall_s"] / spark_result["wall_s"], 2),
        "note": "The Spark join's time includes writing its result as parquet; the file "
        "store's ends with the pandas frame in the driver. The JVM figure is the local "
        "Spark JVM, which holds the executors in local mode.",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logical-date", type=date.fromisoformat, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    day = args.logical_date or dataset_facts(get_settings()).last_date
    report = run(day, args.out)
    console.print(f"speedup {report['speedup']}x -> {args.out}")


if __name__ == "__main__":
    main()
