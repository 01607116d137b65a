"""The SparkSession: one per process, configured from settings (``local[2]`` or a cluster URL)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipelines.config import Settings

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def get_spark(settings: Settings) -> SparkSession:
    from pyspark.sql import SparkSession

    settings.export_env()
    builder = SparkSession.builder
    if settings.spark_java_options:
        builder = builder.config(
            "spark.driver.extraJavaOptions", settings.spark_java_options
        ).config("spark.executor.extraJavaOptions", settings.spark_java_options)
    return (
        builder.master(settings.spark_master)
        .appName("content-ranker")
        .config("spark.driver.memory", settings.spark_driver_memory)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", "8")
        # The lake is one directory per day: listing a thousand of them in a Spark job (one
        # task per path, the default past 32 paths) took 6-10 s per read; the driver lists
        # them in 0.6 s.
        .config("spark.sql.sources.parallelPartitionDiscovery.threshold", "100000")
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        .config("spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.ui.enabled", "false")
        # ALS's checkpoints (pipelines.factors) go once their RDDs are unreachable
        .config("spark.cleaner.referenceTracking.cleanCheckpoints", "true")
        .config("spark.driver.bindAddress", settings.spark_driver_bind_address)
        .config("spark.driver.host", settings.spark_driver_host)
        .config("spark.executor.memory", settings.spark_executor_memory)
        # XGBoost trains in a barrier stage, which needs all its slots at once. With an
        # executor lost, Spark waits for slots 40 x 15 s by default; fail the try after
        # ~30 s instead, and let Airflow's retry run on the recovered cluster.
        .config("spark.scheduler.barrier.maxConcurrentTasksCheck.interval", "10s")
        .config("spark.scheduler.barrier.maxConcurrentTasksCheck.maxFailures", "3")
        .getOrCreate()
    )


def sample_rows(frame: DataFrame, max_rows: int, seed: int, rows: int | None = None) -> DataFrame:
    """About ``max_rows`` rows of ``frame`` at random (all of a smaller one), for checks that
    run on the driver. ``rows``, when known, saves counting ``frame``."""
    rows = frame.count() if rows is None else rows
    return frame if rows <= max_rows else frame.sample(fraction=max_rows / rows, seed=seed)
