"""The DAG's tasks: one function per Airflow task, each a thin I/O shell around a stage module.

Every function takes the run's logical date, reads its inputs from storage,
writes its outputs under ``runs/<logical date>/`` (so a re-run overwrites) and
returns a small JSON-able dict for the logs.
"""

from __future__ import annotations

import gc
import logging
import subprocess
from datetime import date, timedelta

import numpy as np
import pandas as pd

from pipelines import contracts
from pipelines.config import PROJECT_ROOT, get_settings
from pipelines.runs import read_json, stage, write_json

log = logging.getLogger(__name__)


class ValidationFailed(RuntimeError):
    """Raw data broke its contract: the partition is quarantined and the run stops."""


@stage("ingest")
def ingest(logical_date: date, backfill_from: str | None = None) -> dict:
    from pipelines.ingest import ingest as copy_partitions

    settings = get_settings()
    start = date.fromisoformat(backfill_from) if backfill_from else None
    days = copy_partitions(logical_date, settings, backfill_from=start)
    if not days:
        raise FileNotFoundError(f"no landed partition for {logical_date} in {settings.landing_dir}")
    out = {"partitions": [d.isoformat() for d in days]}
    write_json(settings.run_dir(logical_date) / "ingest.json", out)
    return {"partitions": len(days), "first": days[0].isoformat(), "last": days[-1].isoformat()}


@stage("validate")
def validate(logical_date: date) -> dict:
    """Run the raw-data contract on this run's partitions; quarantine them if it fails.

    The partitions are read and checked in batches of whole days (``validation_batch_rows``),
    so the driver holds one batch at a time however many events the run brings.
    """
    import pyarrow.parquet as pq

    from pipelines import ids
    from pipelines.data import partition_path, with_dataset_rating_range
    from pipelines.ingest import day_batches, lake_days, read_partitions
    from pipelines.validation import (
        combine_results,
        failure_message,
        quarantine_partition,
        validate_interactions,
    )

    settings = get_settings()
    run_dir = settings.run_dir(logical_date)
    days = [date.fromisoformat(d) for d in read_json(run_dir / "ingest.json")["partitions"]]
    # Volume is judged against the partitions just before this run's; item ids against
    # the catalogue built from everything validated so far (none on bootstrap).
    earlier = [d for d in lake_days(settings) if d < min(days)][-7:]
    trailing = [pq.read_metadata(partition_path(settings.raw_dir, d)).num_rows for d in earlier]
    known = set(ids.read_mapping(settings.ids_dir / "items.parquet")["external_id"].astype(str))
    # The rating range widens to what bootstrap saw (synth labels are 0..3), never narrows
    # (ML-1M keeps 0.5..5): see ``with_dataset_rating_range``.
    checked = with_dataset_rating_range(settings)
    batches = day_batches(settings, days, settings.validation_batch_rows)
    results = []
    for i, batch in enumerate(batches):
        part = f"-{i + 1}of{len(batches)}" if len(batches) > 1 else ""
        results.append(
            validate_interactions(
                read_partitions(settings, batch),
                partition_dates=batch,
                settings=checked,
                run_name=f"raw-{logical_date}{part}",
                trailing_daily_rows=trailing or None,
                known_item_ids=known or None,
            )
        )
        # GE leaves the batch's frame in reference cycles, which Python's cycle collector
        # frees only when enough new objects pile up: without this, 16M events held 3.6 GB
        # by the 13th batch of 1M rows (one batch needs ~1 GB).
        gc.collect()
    result = combine_results(results)
    write_json(run_dir / "validation.json", result)
    if not result["passed"]:
        # The run's partitions go together, so a re-run ingests them all again.
        for day in days:
            quarantine_partition(partition_path(settings.raw_dir, day), day, result, settings)
        raise ValidationFailed(failure_message(result))
    return {"passed": True, "rows": result["rows"], "data_docs": result["data_docs"]}


@stage("features")
def build_features(logical_date: date) -> dict:
    from pyspark.sql import functions as F

    from pipelines.data import with_dataset_rating_range
    from pipelines.features import SNAPSHOT_PARTITION
    from pipelines.features import build_features as compute
    from pipelines.spark import get_spark, sample_rows
    from pipelines.validation import failure_message, validate_features

    settings = get_settings()
    out = compute(logical_date, settings)
    spark = get_spark(settings)
    results = {}
    for kind in ("user", "item"):
        table = spark.read.parquet(str(settings.offline_dir / f"{kind}_features"))
        if out["since"]:  # what this run wrote
            since = F.lit(out["since"]).cast("timestamp")
            table = table.where(F.col("event_timestamp") >= since)
        table = table.drop(SNAPSHOT_PARTITION)
        rows = out[f"{kind}_rows"]
        results[kind] = validate_features(
            sample_rows(table, settings.validation_sample_rows, settings.seed, rows).toPandas(),
            kind=kind,
            settings=with_dataset_rating_range(settings),
            run_name=f"{kind}-features-{logical_date}",
        )
    write_json(settings.run_dir(logical_date) / "features_validation.json", results)
    write_json(settings.run_dir(logical_date) / "features.json", out)
    failed = [r for r in results.values() if not r["passed"]]
    if failed:  # nothing is materialized from a table that broke its contract
        raise ValidationFailed(" ".join(failure_message(r) for r in failed))
    return out


@stage("materialize")
def materialize(logical_date: date) -> dict:
    """``feast apply`` the repo, then load the newest feature rows into the online store."""
    from pipelines import feature_store
    from pipelines.data import dataset_facts
    from pipelines.training_set import utc_midnight

    settings = get_settings()
    applied = feature_store.apply(settings)
    first = date.fromisoformat(dataset_facts(settings)["first_date"])
    # Snapshots for day D+1 (built from events up to D) are what serving needs.
    end = utc_midnight(logical_date + timedelta(days=1)) + timedelta(seconds=1)
    window = feature_store.materialize(settings, utc_midnight(first), end)
    out = {"applied": applied, "window": window}
    write_json(settings.run_dir(logical_date) / "materialize.json", out)
    return out


@stage("training_set")
def build_training_set(logical_date: date) -> dict:
    """Training and holdout queries, joined point in time to the feature service, in Spark."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from pipelines import feature_store
    from pipelines import training_set as ts
    from pipelines.ingest import lake_events
    from pipelines.spark import get_spark
    from pipelines.validation import failure_message, validate_training_set

    settings = get_settings()
    spark = get_spark(settings)
    run_dir = settings.run_dir(logical_date)
    events = lake_events(spark, settings, logical_date).persist(StorageLevel.MEMORY_AND_DISK)
    queries = ts.queries_for(spark, events, logical_date, settings)
    train, holdout = queries["train"], queries["holdout"]
    # Built once: the join reads the entity rows once per feature view and again to
    # join back, and recomputing the queries each time (a few dozen shuffles) cost 5x.
    entities = (
        train.withColumn("split", F.lit("train"))
        .unionByName(holdout.withColumn("split", F.lit("holdout")))
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    entities.count()
    joined = feature_store.historical_features(spark, settings, entities)
    kept, dropped = ts.pairable_queries(joined.persist(StorageLevel.MEMORY_AND_DISK))
    paths = {"train": run_dir / "training_set.parquet", "holdout": run_dir / "holdout.parquet"}
    for split, path in paths.items():
        rows = kept.where(F.col("split") == split).drop("split")
        rows.orderBy("query_id", "item_id").write.mode("overwrite").parquet(str(path))
    events.unpersist()
    entities.unpersist()
    written = {split: spark.read.parquet(str(path)) for split, path in paths.items()}
    sample = ts.sample_queries(written["train"], settings.validation_sample_rows, settings.seed)
    checked = validate_training_set(
        sample.toPandas(), settings=settings, run_name=f"training-{logical_date}"
    )
    write_json(run_dir / "training_set_validation.json", checked)
    if not checked["passed"]:
        raise ValidationFailed(failure_message(checked))
    counts = {
        split: frame.agg(F.count("*"), F.countDistinct("query_id")).first()
        for split, frame in written.items()
    }
    out = {
        "train_rows": counts["train"][0],
        "train_queries": counts["train"][1],
        "holdout_rows": counts["holdout"][0],
        "holdout_queries": counts["holdout"][1],
        "unpairable_queries_dropped": dropped,
        "negatives": "impressions" if queries["impressions"] else "sampled",
        "training_set_hash": ts.dataset_hash(
            written["train"], [*contracts.MODEL_FEATURES, "label", "query_id"]
        ),
        "bounds": queries["bounds"],
    }
    write_json(run_dir / "training_set.json", out)
    return out


@stage("train")
def train(logical_date: date, shuffle_labels: bool = False) -> dict:
    """Fit the candidate on Spark; ``shuffle_labels`` trains a deliberately useless one (tests)."""
    from pipelines import training
    from pipelines.spark import get_spark

    settings = get_settings()
    spark = get_spark(settings)
    run_dir = settings.run_dir(logical_date)
    train_set = spark.read.parquet(str(run_dir / "training_set.parquet"))
    if shuffle_labels:
        train_set = training.shuffle_labels(train_set, settings.seed)
    params = training.ranker_params(settings)
    booster = training.train_ranker(train_set, params, settings.train_partitions)
    partial = run_dir / "candidate.partial.ubj"  # a kill mid-write leaves no half model
    booster.save_model(partial)
    partial.replace(run_dir / "candidate.ubj")
    out = {
        "params": params,
        "partitions": settings.train_partitions,
        "shuffled_labels": shuffle_labels,
        "trees": booster.num_boosted_rounds(),
    }
    write_json(run_dir / "training.json", out)
    return out


def _load_candidate(run_dir):
    """The booster ``train`` left in the run directory."""
    import xgboost

    booster = xgboost.Booster()
    booster.load_model(run_dir / "candidate.ubj")
    return booster


@stage("evaluate")
def evaluate(logical_date: date) -> dict:
    """Model, random, popularity and the production model on the same holdout queries,
    and the oracle (the planted truth) when the data set has one."""

    from pipelines import evaluation, ids, registry, scoring
    from pipelines.data import dataset_facts, load_truth

    settings = get_settings()
    run_dir = settings.run_dir(logical_date)
    holdout = pd.read_parquet(run_dir / "holdout.parquet")
    candidate = _load_candidate(run_dir)
    matrix = scoring.to_matrix(holdout)
    scores = {"model": scoring.score(candidate, matrix)}
    scores |= evaluation.baseline_scores(holdout, settings.seed)
    production = registry.production_tag(settings)
    if production is not None:
        scores["production"] = scoring.score(registry.load_booster(production, settings), matrix)
    del matrix
    users = ids.read_mapping(settings.ids_dir / "users.parquet")
    items = ids.read_mapping(settings.ids_dir / "items.parquet")
    keys = evaluation.external_keys(holdout, users, items)
    truth = load_truth(settings, int(keys["day"].min()), int(keys["day"].max()), keys)
    if truth is not None:
        scores["oracle"] = evaluation.oracle_scores(holdout, truth, users, items)
    metrics: dict[str, dict | None] = {"production": None}
    per_query = {}
    labels = holdout[["query_id", "label"]]  # not the whole holdout copied per scorer
    for name, values in scores.items():
        pq = evaluation.per_query_metrics(labels.assign(score=values), "score", settings.seed)
        metrics[name] = evaluation.summarise(pq)
        per_query[name] = pq.set_index("query_id")["ndcg@10"]
    genres = dataset_facts(settings).get("genres", [])[: settings.slice_top_genres]
    slices = evaluation.query_slices(
        holdout, settings.slice_cold_max, settings.slice_heavy_min, genres
    )
    frame = pd.DataFrame(per_query).join(slices)
    frame.reset_index().to_parquet(run_dir / "per_query_ndcg.parquet", index=False)
    out = {"metrics": metrics, "production_tag": production, "slices": list(slices.columns)}
    write_json(run_dir / "evaluation.json", out)
    return out


@stage("monitor")
def monitor(logical_date: date) -> dict:
    """Training-serving skew (served log vs offline, same keys and time) and feature drift
    (PSI, training window vs the latest holdout days)."""
    from pipelines import feature_store
    from pipelines.monitoring import MONITORED_FEATURES, drift_report, read_served, skew_report

    settings = get_settings()
    run_dir = settings.run_dir(logical_date)
    served = read_served(settings.serving_log_dir, settings.skew_rows)
    skew = None
    if len(served):
        entities = served[["user_id", "item_id", "event_timestamp"]].astype(
            {"user_id": "int64", "item_id": "int64"}
        )
        offline = feature_store.historical_features_pandas(settings, entities)
        skew = skew_report(served, offline, MONITORED_FEATURES)
    columns = [*MONITORED_FEATURES, "day", "user_id", "item_id"]
    train = pd.read_parquet(run_dir / "training_set.parquet", columns=columns)
    holdout = pd.read_parquet(run_dir / "holdout.parquet", columns=columns)
    latest = holdout[holdout["day"] > holdout["day"].max() - settings.drift_days]
    # One row per user (their latest) and per item-day: a query repeats its user's row
    # for every candidate, and a few very active users would otherwise be the sample.
    drift: dict[str, float] = {}
    for key, features in (
        ("user_id", contracts.USER_FEATURES),
        (["item_id", "day"], contracts.ITEM_FEATURES),
    ):
        drift |= drift_report(
            train.sort_values("day").drop_duplicates(key, keep="last"),
            latest.sort_values("day").drop_duplicates(key, keep="last"),
            features,
        )
    out = {
        "skew": skew,
        "drift_psi": drift,
        "drift_rows": {
            "train_users": int(train["user_id"].nunique()),
            "latest_users": int(latest["user_id"].nunique()),
        },
    }
    write_json(run_dir / "monitoring.json", out)
    return {
        "served_rows": skew["rows"] if skew else 0,
        "max_mismatch": max(skew["mismatch_rate"].values()) if skew else None,
        "max_psi": max(drift.values()) if drift else None,
    }


@stage("gate")
def gate(logical_date: date) -> dict:
    """Champion/challenger: popularity, production (mean and per-query significance), slices."""
    from pipelines import registry
    from pipelines.monitoring import monitoring_checks
    from pipelines.promotion import freshness_check, paired_bootstrap, slice_report
    from pipelines.promotion import gate as decide

    settings = get_settings()
    run_dir = settings.run_dir(logical_date)
    evaluation = read_json(run_dir / "evaluation.json")
    metrics = evaluation["metrics"]
    per_query = pd.read_parquet(run_dir / "per_query_ndcg.parquet").set_index("query_id")
    slices = per_query[evaluation.get("slices", [])].astype(bool)
    significance = None
    if metrics.get("production") is not None:
        significance = paired_bootstrap(
            per_query["model"].to_numpy(),
            per_query["production"].to_numpy(),
            settings.bootstrap_samples,
            settings.seed,
        )
        report = slice_report(
            per_query, slices, "production", settings.slice_max_drop, settings.slice_min_queries
        )
    else:  # no champion yet: slices are reported against popularity, not gated
        report = slice_report(per_query, slices, "popularity", float("inf"), 1)
    production = evaluation.get("production_tag")
    production_date = (
        registry.model_info(production, settings)["metadata"].get("logical_date")
        if production
        else None
    )
    monitoring = read_json(run_dir / "monitoring.json", {})
    decision = decide(
        metrics,
        settings.production_tolerance,
        significance=significance,
        slices=report,
        extra_checks=freshness_check(logical_date.isoformat(), production_date)
        + monitoring_checks(
            monitoring.get("skew"),
            monitoring.get("drift_psi"),
            settings.skew_max_mismatch,
            settings.drift_max_psi,
            monitoring.get("drift_rows", {}).get("latest_users"),
            settings.drift_min_users,
        ),
    )
    decision |= {"significance": significance, "slices": report}
    write_json(run_dir / "gate.json", decision)
    return decision


def _git_sha() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@stage("register")
def register(logical_date: date) -> dict:
    """Save the candidate in the model store with its lineage (promoted or not)."""

    from pipelines import registry

    settings = get_settings()
    run_dir = settings.run_dir(logical_date)
    booster = _load_candidate(run_dir)
    validation = read_json(run_dir / "validation.json", {})
    training_set = read_json(run_dir / "training_set.json", {})
    metadata = {
        "logical_date": logical_date.isoformat(),
        "partitions": read_json(run_dir / "ingest.json", {}).get("partitions", []),
        "validation": {
            "passed": validation.get("passed"),
            "suites": {k: v.get("success") for k, v in validation.get("suites", {}).items()},
        },
        "feature_service": contracts.FEATURE_SERVICE,
        "training_set_hash": training_set.get("training_set_hash"),
        "training_rows": training_set.get("train_rows"),
        "git_sha": _git_sha(),
        "params": read_json(run_dir / "training.json", {}).get("params", {}),
        "metrics": read_json(run_dir / "evaluation.json", {}).get("metrics", {}),
        "gate": read_json(run_dir / "gate.json", {}),
    }
    tag = registry.save_model(
        booster,
        metadata=metadata,
        labels={"logical_date": logical_date.isoformat()},
        settings=settings,
    )
    out = {"model_tag": tag}
    write_json(run_dir / "register.json", out)
    return out


def sample_requests(holdout: pd.DataFrame, n: int, seed: int) -> list[dict]:
    """Real /rank bodies from holdout queries (external ids), for infra-validation."""
    from pipelines import ids

    settings = get_settings()
    users = ids.read_mapping(settings.ids_dir / "users.parquet")
    items = ids.read_mapping(settings.ids_dir / "items.parquet")
    user_ext = dict(zip(users["internal_id"], users["external_id"].astype(str), strict=True))
    item_ext = dict(zip(items["internal_id"], items["external_id"].astype(str), strict=True))
    rng = np.random.default_rng(seed)
    qids = holdout["query_id"].drop_duplicates().to_numpy()
    bodies = []
    for qid in rng.choice(qids, size=min(n, len(qids)), replace=False):
        group = holdout[holdout["query_id"] == qid]
        bodies.append(
            {
                "user_id": user_ext[int(group["user_id"].iloc[0])],
                "item_ids": [item_ext[int(i)] for i in group["item_id"]],
                "k": 10,
            }
        )
    return bodies


@stage("infra_validate")
def infra_validate(logical_date: date) -> dict:
    """Serve the candidate in a real BentoML process and send it real requests."""
    from pipelines.infra_validation import infra_validate as check

    settings = get_settings()
    run_dir = settings.run_dir(logical_date)
    decision = read_json(run_dir / "gate.json")
    if not decision["passed"] or not settings.infra_validate:
        reason = "gate failed" if not decision["passed"] else "disabled by configuration"
        out = {"passed": None, "skipped": True, "reason": reason}
    else:
        tag = read_json(run_dir / "register.json")["model_tag"]
        holdout = pd.read_parquet(run_dir / "holdout.parquet")
        out = check(tag, settings, sample_requests(holdout, 5, settings.seed))
    write_json(run_dir / "infra_validation.json", out)
    return out


@stage("promote")
def promote(logical_date: date) -> dict:
    """Move the ``production`` pointer to the candidate iff the gate and infra-validation passed."""
    from pipelines import registry

    settings = get_settings()
    run_dir = settings.run_dir(logical_date)
    decision = read_json(run_dir / "gate.json")
    infra = read_json(run_dir / "infra_validation.json", {})
    tag = read_json(run_dir / "register.json")["model_tag"]
    if not decision["passed"]:
        out = {"promoted": False, "reason": f"gate: {decision['reason']}"}
    elif infra.get("passed") is False:
        out = {"promoted": False, "reason": f"infra-validation: {infra.get('reason')}"}
    else:
        registry.promote(tag, settings, reason=decision["reason"])
        out = {"promoted": True, "reason": decision["reason"]}
    out |= {"model_tag": tag, "production_tag": registry.production_tag(settings)}
    write_json(run_dir / "promotion.json", out)
    return out


def summarize(logical_date: date | str, run_id: str) -> str:
    """Write ``summary.json`` for the run from what each task left behind; returns its path."""
    from pipelines.data import dataset_facts
    from pipelines.runs import as_date

    settings = get_settings()
    day = as_date(logical_date)
    run_dir = settings.run_dir(day)
    facts = dataset_facts(settings)
    validation = read_json(run_dir / "validation.json", {})
    suites = dict(validation.get("suites", {}))
    for extra in ("features_validation.json", "training_set_validation.json"):
        found = read_json(run_dir / extra, {})
        for result in found.values() if extra.startswith("features") else [found]:
            suites |= result.get("suites", {}) if result else {}
    evaluation = read_json(run_dir / "evaluation.json", {})
    gate_result = read_json(run_dir / "gate.json", {})
    promotion = read_json(run_dir / "promotion.json", {})
    summary = {
        "run_id": run_id,
        "logical_date": day.isoformat(),
        "dataset": {k: facts[k] for k in ("name", "rows", "users", "items")},
        "validation": {
            "passed": validation.get("passed") and all(v.get("success") for v in suites.values()),
            "suites": suites,
            "data_docs": validation.get("data_docs"),
        },
        "metrics": evaluation.get("metrics"),
        "gate": {
            "passed": gate_result.get("passed"),
            "reason": gate_result.get("reason"),
            "significance": gate_result.get("significance"),
            "slices": gate_result.get("slices"),
        },
        "model_tag": read_json(run_dir / "register.json", {}).get("model_tag"),
        "promoted": bool(promotion.get("promoted", False)),
        "promotion_reason": promotion.get("reason"),
        "infra_validation": read_json(run_dir / "infra_validation.json"),
        "training_set": read_json(run_dir / "training_set.json"),
        "monitoring": read_json(run_dir / "monitoring.json"),
        "timings_s": read_json(run_dir / "timings.json", {}),
        "resources": read_json(run_dir / "resources.json", {}),
        "report": str(run_dir / "report.html"),
    }
    path = write_json(run_dir / "summary.json", summary)
    from pipelines.report import write_report

    write_report(run_dir)
    return str(path)
