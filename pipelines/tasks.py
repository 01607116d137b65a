"""The DAG's tasks: one function per Airflow task, each a thin I/O shell around a stage module.

Every function takes the run's logical date, reads its inputs from storage,
writes its outputs to the :mod:`pipelines.catalog` entries keyed by that date (so a
re-run overwrites) and returns a small JSON-able dict for the logs.
"""

from __future__ import annotations

import gc
import logging
from datetime import date, timedelta

import numpy as np
import pandas as pd

from pipelines import catalog, contracts
from pipelines.config import get_settings
from pipelines.runs import stage

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
        landing = catalog.LANDING.prefix(settings)
        raise FileNotFoundError(f"no landed partition for {logical_date} in {landing}")
    catalog.INGEST.save(settings, catalog.Ingest(partitions=days), date=logical_date)
    return {"partitions": len(days), "first": days[0].isoformat(), "last": days[-1].isoformat()}


@stage("validate")
def validate(logical_date: date) -> dict:
    """Run the raw-data contract on this run's partitions; quarantine them if it fails.

    The partitions are read and checked in batches of whole days (``validation_batch_rows``),
    so the driver holds one batch at a time however many events the run brings.
    """
    import pyarrow.parquet as pq

    from pipelines import ids
    from pipelines.data import with_dataset_rating_range
    from pipelines.ingest import day_batches, lake_days, read_partitions
    from pipelines.validation import (
        combine_results,
        failure_message,
        quarantine_partition,
        validate_interactions,
    )

    settings = get_settings()
    days = catalog.INGEST.load(settings, date=logical_date).partitions
    # Volume is judged against the partitions just before this run's; item ids against
    # the catalogue built from everything validated so far (none on bootstrap).
    earlier = [d for d in lake_days(settings) if d < min(days)][-7:]
    trailing = [pq.read_metadata(catalog.LAKE.path(settings, date=d)).num_rows for d in earlier]
    known = set(ids.read_mapping(catalog.ITEM_IDS.path(settings))["external_id"].astype(str))
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
    catalog.VALIDATION.save(settings, result, date=logical_date)
    if not result["passed"]:
        # The run's partitions go together, so a re-run ingests them all again.
        for day in days:
            quarantine_partition(catalog.LAKE.path(settings, date=day), day, result, settings)
        raise ValidationFailed(failure_message(result))
    return {"passed": True, "rows": result["rows"], "data_docs": result["data_docs"]}


@stage("features")
def build_features(logical_date: date) -> dict:
    """Bring both feature tables up to the lake's last day, then check what was written.

    The tables hold every snapshot the lake supports, through the day after its last
    partition, whatever the run's date: each row only summarises events before its
    own timestamp, and point-in-time joins never read past an entity row's time. So
    a backfill of an earlier date, run after later ones, drops none of the snapshots
    that the later runs and the online store rely on. From the newest state before the
    run's date (``features.previous_state``), only the later snapshots are computed, from
    the lake days their windows cover; a re-run of a date recomputes its own day.
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from pipelines import factors, features, ids
    from pipelines.data import dataset_facts, with_dataset_rating_range
    from pipelines.ingest import lake_days, lake_events, lake_frame
    from pipelines.spark import get_spark, sample_rows
    from pipelines.training_set import day_bounds
    from pipelines.validation import failure_message, validate_features

    settings = get_settings()
    spark = get_spark(settings)
    in_lake = lake_days(settings)
    through = max([logical_date, *in_lake])
    previous = features.previous_state(spark, settings, logical_date)
    since = features.first_snapshot_day(previous)
    # Read once: the id maps and both tables read it again, and on a lake of a thousand
    # daily files opening them cost more than the work (5-10 s per read on 2 cores).
    since_events = features.events_since(previous)
    lake = lake_frame(spark, settings, until=through, since=since_events)
    lake = lake.persist(StorageLevel.MEMORY_AND_DISK)
    users = ids.update_mapping(catalog.USER_IDS.path(settings), ids.distinct_ids(lake, "user_id"))
    items = ids.update_mapping(catalog.ITEM_IDS.path(settings), ids.distinct_ids(lake, "item_id"))
    events = ids.internal_events(spark, lake, users, items)
    meta_path = catalog.ITEMS.path(catalog.dataset_dir(settings))
    meta = pd.read_parquet(meta_path).astype({"item_id": "string"}) if meta_path.exists() else None
    attrs = features.item_attributes(meta, items, dataset_facts(settings).genres)

    computed = features.compute_features(spark, events, attrs, through, previous)
    tables = {k: catalog.FEATURE_TABLE.path(settings, kind=k) for k in ("user", "item")}
    tables["user"].parent.mkdir(parents=True, exist_ok=True)
    rows = {
        kind: features.write_offline(frame, str(tables[kind]), since)
        for kind, frame in (("user", computed.users), ("item", computed.items))
    }
    after = previous.through if previous else None
    features.write_state(computed.user_state, settings, "user", through, after)
    features.write_state(computed.item_state, settings, "item", through, after)
    out = {
        "user_rows": rows["user"],
        "item_rows": rows["item"],
        "events_read": lake.count(),
        "through": through.isoformat(),
        "since": since.isoformat() if since else None,
    }
    # The factors are fit on all events before each snapshot, not only the recent days:
    # without a previous state, that is the lake just read, which is not read again.
    bounds = day_bounds(logical_date, settings.holdout_days, settings.train_days)
    history = events if since_events is None else lake_events(spark, settings, through)
    history = history.persist(StorageLevel.MEMORY_AND_DISK)
    last = features.day_number(through)
    out["factors"] = factors.update_factors(
        spark,
        history,
        settings,
        bounds["train_start"],
        last,
        factors.item_text(meta, items),
        every=factors.grid_step(settings, features.day_number(in_lake[0]), last),
    )
    history.unpersist()
    lake.unpersist()

    results = {}
    for kind in ("user", "item"):
        table = spark.read.parquet(str(tables[kind]))
        if since:  # what this run wrote
            table = table.where(F.col("event_timestamp") >= F.lit(since).cast("timestamp"))
        table = table.drop(features.SNAPSHOT_PARTITION)
        results[kind] = validate_features(
            sample_rows(
                table, settings.validation_sample_rows, settings.seed, rows[kind]
            ).toPandas(),
            kind=kind,
            settings=with_dataset_rating_range(settings),
            run_name=f"{kind}-features-{logical_date}",
        )
    catalog.FEATURES_VALIDATION.save(settings, results, date=logical_date)
    catalog.FEATURES.save(settings, out, date=logical_date)
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
    first = dataset_facts(settings).first_date
    # Snapshots for day D+1 (built from events up to D) are what serving needs.
    end = utc_midnight(logical_date + timedelta(days=1)) + timedelta(seconds=1)
    window = feature_store.materialize(settings, utc_midnight(first), end)
    out = {"applied": applied, "window": window}
    catalog.MATERIALIZE.save(settings, out, date=logical_date)
    return out


@stage("training_set")
def build_training_set(logical_date: date) -> dict:
    """Training and holdout queries, joined point in time to the feature service, in Spark."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from pipelines import factors, feature_store, lineage
    from pipelines import training_set as ts
    from pipelines.ingest import lake_days, lake_events
    from pipelines.spark import get_spark
    from pipelines.validation import failure_message, validate_training_set

    settings = get_settings()
    spark = get_spark(settings)
    events = lake_events(spark, settings, logical_date).persist(StorageLevel.MEMORY_AND_DISK)
    queries = ts.queries_for(spark, events, logical_date, settings)
    train, holdout = queries["train"], queries["holdout"]
    # Built once and read back: the join reads the entity rows once per feature view and
    # again to join back, and recomputing the queries each time (a few dozen shuffles)
    # cost 5x. Read from storage, they are a leaf of the join's plan; cached, their whole
    # lineage stayed in it, and Spark analysed it again at every step and action (the
    # README has the measure).
    entity_rows = catalog.ENTITY_ROWS.path(settings, date=logical_date)
    train.withColumn("split", F.lit("train")).unionByName(
        holdout.withColumn("split", F.lit("holdout"))
    ).write.mode("overwrite").parquet(str(entity_rows))
    entities = spark.read.parquet(str(entity_rows))
    joined = feature_store.historical_features(spark, settings, entities)
    kept, dropped = ts.pairable_queries(joined.persist(StorageLevel.MEMORY_AND_DISK))
    paths = {
        "train": catalog.TRAINING_SET.path(settings, date=logical_date),
        "holdout": catalog.HOLDOUT.path(settings, date=logical_date),
    }
    for split, path in paths.items():
        # The vectors served only to compute als_score and content_sim; the model never
        # reads them.
        rows = kept.where(F.col("split") == split).drop(
            "split", *contracts.USER_VECTORS, *contracts.ITEM_VECTORS
        )
        rows.orderBy("query_id", "item_id").write.mode("overwrite").parquet(str(path))
    events.unpersist()
    written = {split: spark.read.parquet(str(path)) for split, path in paths.items()}
    sample = ts.sample_queries(written["train"], settings.validation_sample_rows, settings.seed)
    checked = validate_training_set(
        sample.toPandas(), settings=settings, run_name=f"training-{logical_date}"
    )
    catalog.TRAINING_SET_VALIDATION.save(settings, checked, date=logical_date)
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
        "partitions": lineage.partitions(
            settings, [d for d in lake_days(settings) if d <= logical_date]
        ),
        "registry_sha256": lineage.registry_hash(feature_store.open_store(settings)),
        "factor_snapshots": factors.snapshots_through(
            settings, queries["bounds"]["holdout_end"] + 1
        ),
    }
    catalog.TRAINING_SET_FACTS.save(settings, out, date=logical_date)
    return out


@stage("train")
def train(logical_date: date, shuffle_labels: bool = False) -> dict:
    """Fit the candidate on Spark; ``shuffle_labels`` trains a deliberately useless one (tests).

    Its ablations and, when the task slots hold more than one fit at a time, its refit
    (:func:`refit`) are fit beside it: the refit then costs no time of its own when the
    gate passes, and a slot's time when it does not."""
    from pipelines import training
    from pipelines.spark import get_spark

    settings = get_settings()
    spark = get_spark(settings)
    train_set = spark.read.parquet(str(catalog.TRAINING_SET.path(settings, date=logical_date)))
    if shuffle_labels:
        train_set = training.shuffle_labels(train_set, settings.seed)
    params = training.ranker_params(settings)
    at_once = training.fits_at_once(spark, params)
    ablated = contracts.SIGNALS if settings.ablation and not shuffle_labels else {}
    fits = {"candidate": (train_set, [])}
    fits |= {f"without {signal}": (train_set, inputs) for signal, inputs in ablated.items()}
    refit_rows = None
    if at_once > 1 and not shuffle_labels:
        refit_rows = _refit_rows(spark, settings, logical_date)
        fits["refit"] = (refit_rows, [])
    boosters = training.train_rankers(fits, params, settings.train_partitions, at_once)
    booster = boosters["candidate"]
    candidate = catalog.CANDIDATE.path(settings, date=logical_date)
    catalog.atomic_write(candidate, bytes(booster.save_raw(raw_format="ubj")))
    for signal in ablated:
        path = catalog.ABLATION_MODEL.path(settings, date=logical_date, signal=signal)
        catalog.atomic_write(path, bytes(boosters[f"without {signal}"].save_raw(raw_format="ubj")))
    ahead = catalog.REFIT_AHEAD.path(settings, date=logical_date)
    refit_ahead = None
    if refit_rows is not None:
        catalog.atomic_write(ahead, bytes(boosters["refit"].save_raw(raw_format="ubj")))
        refit_ahead = _refit_facts(refit_rows, boosters["refit"])
    else:
        ahead.unlink(missing_ok=True)  # a re-run's: never taken for this run's
    out = {
        "params": params,
        "partitions": settings.train_partitions,
        "shuffled_labels": shuffle_labels,
        "trees": booster.num_boosted_rounds(),
        "ablated": ablated,
        "refit_ahead": refit_ahead,
    }
    catalog.TRAINING.save(settings, out, date=logical_date)
    return out


def _refit_rows(spark, settings, logical_date: date):
    """Every query through the logical date, under the training protocol (the refit's rows)."""
    from pipelines import training_set as ts

    return ts.refit_rows(
        spark.read.parquet(str(catalog.TRAINING_SET.path(settings, date=logical_date))),
        spark.read.parquet(str(catalog.HOLDOUT.path(settings, date=logical_date))),
        settings.negatives_per_query,
        settings.max_positives_per_query,
        settings.max_train_queries,
        settings.seed,
    )


def _refit_facts(rows, booster) -> dict:
    from pyspark.sql import functions as F

    from pipelines import training_set as ts

    n, queries, first, last = rows.agg(
        F.count("*"), F.countDistinct("query_id"), F.min("day"), F.max("day")
    ).first()
    return {
        "rows": n,
        "queries": queries,
        "first_day": ts.day_to_date(first),
        "last_day": ts.day_to_date(last),
        "trees": booster.num_boosted_rounds(),
    }


def _load_candidate(
    settings, logical_date: date, entry: catalog.Entry = catalog.CANDIDATE, **keys: str
):
    """The booster ``train`` (or, with ``catalog.REFIT_CANDIDATE``, ``refit``) left for the
    run of ``logical_date``."""
    import xgboost

    booster = xgboost.Booster()
    booster.load_model(entry.path(settings, date=logical_date, **keys))
    return booster


@stage("evaluate")
def evaluate(logical_date: date) -> dict:
    """Model, random, popularity and the production model on the same holdout queries,
    and the oracle (the planted truth) when the data set has one."""

    from pipelines import evaluation, ids, registry, scoring
    from pipelines.data import dataset_facts, holdout_truth
    from pipelines.spark import get_spark

    settings = get_settings()
    holdout = pd.read_parquet(catalog.HOLDOUT.path(settings, date=logical_date))
    candidate = _load_candidate(settings, logical_date)
    matrix = scoring.to_matrix(holdout)
    scores = {"model": scoring.score(candidate, matrix)}
    ablated = catalog.TRAINING.load(settings, date=logical_date).ablated
    for signal, inputs in ablated.items():
        model = _load_candidate(settings, logical_date, catalog.ABLATION_MODEL, signal=signal)
        without = matrix.copy()
        without[:, [contracts.MODEL_FEATURES.index(f) for f in inputs]] = np.nan
        scores[f"without {signal}"] = scoring.score(model, without)
    scores |= evaluation.baseline_scores(holdout, settings.seed)
    production = registry.production_tag(settings)
    # A refit production model was trained into this holdout: score its evaluated twin,
    # trained as this candidate is, up to the start of its own holdout.
    scored = registry.evaluated_tag(production, settings) if production else None
    if scored is not None:
        scores["production"] = scoring.score(registry.load_booster(scored, settings), matrix)
    del matrix
    users = ids.read_mapping(catalog.USER_IDS.path(settings))
    items = ids.read_mapping(catalog.ITEM_IDS.path(settings))
    keys = evaluation.external_keys(holdout, users, items)
    truth = holdout_truth(lambda: get_spark(settings), settings, keys)
    if truth is not None:
        scores["oracle"] = evaluation.oracle_scores(holdout, truth, users, items)
    metrics: dict[str, dict | None] = {"production": None}
    per_query = {}
    labels = holdout[["query_id", "label"]]  # not the whole holdout copied per scorer
    for name, values in scores.items():
        pq = evaluation.per_query_metrics(labels.assign(score=values), "score", settings.seed)
        metrics[name] = evaluation.summarise(pq)
        per_query[name] = pq.set_index("query_id")["ndcg@10"]
    genres = dataset_facts(settings).genres[: settings.slice_top_genres]
    slices = evaluation.query_slices(
        holdout, settings.slice_cold_max, settings.slice_heavy_min, genres
    )
    frame = pd.DataFrame(per_query).join(slices)
    with catalog.atomic_path(catalog.PER_QUERY.path(settings, date=logical_date)) as tmp:
        frame.reset_index().to_parquet(tmp, index=False)
    ablation = {
        signal: {
            "features": inputs,
            "ndcg_at_10": metrics.pop(f"without {signal}")["ndcg@10"],
        }
        for signal, inputs in ablated.items()
    }
    for result in ablation.values():
        result["lift"] = round(metrics["model"]["ndcg@10"] - result["ndcg_at_10"], 4)
    out = {
        "metrics": metrics,
        "production_tag": production,
        "production_scored_tag": scored,
        "slices": list(slices.columns),
        "ablation": ablation,
    }
    catalog.EVALUATION.save(settings, out, date=logical_date)
    return out


@stage("monitor")
def monitor(logical_date: date) -> dict:
    """Training-serving skew (served log vs offline, same keys and time) and feature drift
    (PSI, training window vs the latest holdout days)."""
    from pipelines import feature_store
    from pipelines.monitoring import MONITORED_FEATURES, drift_inputs, read_served, skew_report
    from pipelines.spark import get_spark

    settings = get_settings()
    served = read_served(settings.serving_log_dir, settings.skew_rows)
    skew = None
    if len(served):
        entities = served[["user_id", "item_id", "event_timestamp"]].astype(
            {"user_id": "int64", "item_id": "int64"}
        )
        offline = feature_store.historical_features_pandas(settings, entities)
        skew = skew_report(served, offline, MONITORED_FEATURES)
    spark = get_spark(settings)
    columns = [*MONITORED_FEATURES, "day", "user_id", "item_id"]
    train, holdout = (
        spark.read.parquet(str(entry.path(settings, date=logical_date))).select(*columns)
        for entry in (catalog.TRAINING_SET, catalog.HOLDOUT)
    )
    drift, users = drift_inputs(
        train, holdout, settings.drift_days, settings.drift_sample_rows, settings.seed
    )
    out = {
        "skew": skew,
        "drift_psi": drift,
        "drift_rows": users,
    }
    catalog.MONITORING.save(settings, out, date=logical_date)
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
    evaluation = catalog.EVALUATION.load(settings, date=logical_date)
    metrics = evaluation.metrics
    per_query = pd.read_parquet(catalog.PER_QUERY.path(settings, date=logical_date))
    per_query = per_query.set_index("query_id")
    slices = per_query[evaluation.slices].astype(bool)
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
    production = evaluation.production_tag
    production_date = (
        registry.model_info(production, settings)["metadata"].get("logical_date")
        if production
        else None
    )
    monitoring = catalog.MONITORING.load_or_none(settings, date=logical_date)
    decision = decide(
        metrics,
        settings.production_tolerance,
        significance=significance,
        slices=report,
        extra_checks=freshness_check(logical_date.isoformat(), production_date)
        + monitoring_checks(
            monitoring.skew if monitoring else None,
            monitoring.drift_psi if monitoring else None,
            settings.skew_max_mismatch,
            settings.drift_max_psi,
            monitoring.drift_rows.get("latest_users") if monitoring else None,
            settings.drift_min_users,
        ),
    )
    decision |= {"significance": significance, "slices": report}
    catalog.GATE.save(settings, decision, date=logical_date)
    return decision


def _candidate_sha256(settings, logical_date: date) -> str:
    import hashlib

    with open(catalog.CANDIDATE.path(settings, date=logical_date), "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@stage("refit")
def refit(logical_date: date) -> dict:
    """When the gate passed: the candidate's configuration fit again on every query through
    the logical date (its training window and the holdout), so that production learns from
    its last days too. The gate's evidence is the candidate's; the refit is what is served."""
    settings = get_settings()
    decision = catalog.GATE.load(settings, date=logical_date)
    candidate = _candidate_sha256(settings, logical_date)
    ahead = catalog.REFIT_AHEAD.path(settings, date=logical_date)
    fitted = catalog.TRAINING.load(settings, date=logical_date).refit_ahead
    if not decision.passed:
        ahead.unlink(missing_ok=True)  # never served: the gate did not pass
        out = {
            "refit": False,
            "reason": "the gate did not pass: the candidate is not refit",
            "candidate_sha256": candidate,
        }
    else:
        path = catalog.REFIT_CANDIDATE.path(settings, date=logical_date)
        if fitted is not None and ahead.exists():
            ahead.replace(path)  # fit by train, beside the candidate
            facts = fitted.model_dump()
        else:
            from pipelines import training
            from pipelines.spark import get_spark

            spark = get_spark(settings)
            rows = _refit_rows(spark, settings, logical_date)
            params = catalog.TRAINING.load(settings, date=logical_date).params
            booster = training.train_ranker(rows, params, settings.train_partitions)
            catalog.atomic_write(path, bytes(booster.save_raw(raw_format="ubj")))
            facts = _refit_facts(rows, booster)
        out = {
            "refit": True,
            "reason": "the gate passed: refit through the logical date",
            "candidate_sha256": candidate,
            **facts,
        }
    catalog.REFIT.save(settings, out, date=logical_date)
    return out


@stage("register")
def register(logical_date: date) -> dict:
    """Save the candidate in the model store with its lineage (promoted or not), and its
    refit, when there is one, naming the candidate as the model the gate evaluated."""
    from pipelines import lineage, registry
    from pipelines.training_set import day_to_date

    settings = get_settings()
    booster = _load_candidate(settings, logical_date)
    refit = catalog.REFIT.load_or_none(settings, date=logical_date)
    if refit is not None and refit.candidate_sha256 != _candidate_sha256(settings, logical_date):
        raise RuntimeError(f"{logical_date}'s refit is of another candidate: run refit again")
    validation = catalog.VALIDATION.load_or_none(settings, date=logical_date)
    features = catalog.FEATURES_VALIDATION.load_or_none(settings, date=logical_date)
    training_set = catalog.TRAINING_SET_FACTS.load_or_none(settings, date=logical_date)
    training = catalog.TRAINING.load_or_none(settings, date=logical_date)
    evaluation = catalog.EVALUATION.load_or_none(settings, date=logical_date)
    decision = catalog.GATE.load_or_none(settings, date=logical_date)
    metadata = {
        "logical_date": logical_date.isoformat(),
        "partitions": training_set.partitions if training_set else None,
        "validation": lineage.suites(validation),
        "features_validation": {
            kind: lineage.suites(result)
            for kind, result in (features.root if features else {}).items()
        },
        "training_set_validation": lineage.suites(
            catalog.TRAINING_SET_VALIDATION.load_or_none(settings, date=logical_date)
        ),
        "feature_service": contracts.FEATURE_SERVICE,
        "feast_registry_sha256": training_set.registry_sha256 if training_set else None,
        "training_set_hash": training_set.training_set_hash if training_set else None,
        "factor_snapshots": training_set.factor_snapshots if training_set else None,
        "training_rows": training_set.train_rows if training_set else None,
        "code": lineage.code_version(),
        "libraries": lineage.library_versions(),
        "params": training.params if training else {},
        "metrics": evaluation.metrics if evaluation else {},
        "gate": decision.model_dump(mode="json") if decision else {},
    }
    if training_set:
        metadata["trained_through"] = day_to_date(training_set.bounds["train_end"]).isoformat()
    labels = {"logical_date": logical_date.isoformat()}
    evaluated = registry.save_model(
        booster,
        metadata=metadata | {"role": "evaluated"},
        labels=labels | {"role": "evaluated"},
        settings=settings,
    )
    tag = evaluated
    if refit is not None and refit.refit:
        tag = registry.save_model(
            _load_candidate(settings, logical_date, catalog.REFIT_CANDIDATE),
            metadata=metadata
            | {
                "role": "served",
                "evaluated_model": evaluated,
                "trained_through": refit.last_day.isoformat(),
                "training_rows": refit.rows,
                "refit": refit.model_dump(mode="json"),
            },
            labels=labels | {"role": "served"},
            settings=settings,
        )
    out = {"model_tag": tag, "evaluated_tag": evaluated}
    catalog.REGISTRATION.save(settings, out, date=logical_date)
    return out


def sample_requests(holdout: pd.DataFrame, n: int, seed: int) -> list[dict]:
    """Real /rank bodies from holdout queries (external ids), for infra-validation."""
    from pipelines import ids

    settings = get_settings()
    users = ids.read_mapping(catalog.USER_IDS.path(settings))
    items = ids.read_mapping(catalog.ITEM_IDS.path(settings))
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
    decision = catalog.GATE.load(settings, date=logical_date)
    if not decision.passed or not settings.infra_validate:
        reason = "gate failed" if not decision.passed else "disabled by configuration"
        out = {"passed": None, "skipped": True, "reason": reason}
    else:
        tag = catalog.REGISTRATION.load(settings, date=logical_date).model_tag
        holdout = pd.read_parquet(
            catalog.HOLDOUT.path(settings, date=logical_date),
            columns=["query_id", "user_id", "item_id"],  # all a request needs
        )
        out = check(tag, settings, sample_requests(holdout, 5, settings.seed))
    catalog.INFRA_VALIDATION.save(settings, out, date=logical_date)
    return out


@stage("promote")
def promote(logical_date: date) -> dict:
    """Move the ``production`` pointer to the candidate iff the gate and infra-validation passed."""
    from pipelines import registry

    settings = get_settings()
    decision = catalog.GATE.load(settings, date=logical_date)
    infra = catalog.INFRA_VALIDATION.load_or_none(settings, date=logical_date)
    tag = catalog.REGISTRATION.load(settings, date=logical_date).model_tag
    if not decision.passed:
        out = {"promoted": False, "reason": f"gate: {decision.reason}"}
    elif infra is not None and infra.passed is False:
        out = {"promoted": False, "reason": f"infra-validation: {infra.reason}"}
    else:
        registry.promote(tag, settings, reason=decision.reason)
        out = {"promoted": True, "reason": decision.reason}
    out |= {"model_tag": tag, "production_tag": registry.production_tag(settings)}
    catalog.PROMOTION.save(settings, out, date=logical_date)
    return out


def summarize(logical_date: date | str, run_id: str) -> str:
    """Write the run's ``catalog.SUMMARY`` from what each task left behind, and its report;
    returns the summary's path."""
    from pipelines.data import dataset_facts

    settings = get_settings()
    day = catalog.as_date(logical_date)
    facts = dataset_facts(settings)
    validation = catalog.VALIDATION.load_or_none(settings, date=day)
    features = catalog.FEATURES_VALIDATION.load_or_none(settings, date=day)
    training_set = catalog.TRAINING_SET_VALIDATION.load_or_none(settings, date=day)
    suites = dict(validation.suites) if validation else {}
    for result in [*(features.root.values() if features else []), training_set]:
        suites |= result.suites if result else {}
    passed = validation.passed and all(s.success for s in suites.values()) if validation else None
    evaluation = catalog.EVALUATION.load_or_none(settings, date=day)
    decision = catalog.GATE.load_or_none(settings, date=day)
    registration = catalog.REGISTRATION.load_or_none(settings, date=day)
    promotion = catalog.PROMOTION.load_or_none(settings, date=day)
    timings = catalog.TIMINGS.load_or_none(settings, date=day)
    resources = catalog.RESOURCES.load_or_none(settings, date=day)
    summary = catalog.Summary(
        run_id=run_id,
        logical_date=day,
        dataset={k: getattr(facts, k) for k in ("name", "rows", "users", "items")},
        validation=catalog.SummaryValidation(
            passed=passed,
            suites=suites,
            data_docs=validation.data_docs if validation else None,
        ),
        metrics=evaluation.metrics if evaluation else None,
        gate=catalog.SummaryGate(
            passed=decision.passed if decision else None,
            reason=decision.reason if decision else None,
            significance=decision.significance if decision else None,
            slices=decision.slices if decision else None,
        ),
        model_tag=registration.model_tag if registration else None,
        promoted=promotion.promoted if promotion else False,
        promotion_reason=promotion.reason if promotion else None,
        infra_validation=catalog.INFRA_VALIDATION.load_or_none(settings, date=day),
        training_set=catalog.TRAINING_SET_FACTS.load_or_none(settings, date=day),
        refit=catalog.REFIT.load_or_none(settings, date=day),
        monitoring=catalog.MONITORING.load_or_none(settings, date=day),
        timings_s=timings.root if timings else {},
        resources=resources.root if resources else {},
        report=str(catalog.REPORT.path(settings, date=day)),
    )
    path = catalog.SUMMARY.save(settings, summary, date=day)
    from pipelines.report import write_report

    write_report(catalog.run_dir(settings, day))
    return str(path)
