"""End to end on a slice of the real MovieLens-1M: the Airflow DAG, then a real server.

One module-scoped world: bootstrap a few hundred users, run ``airflow dags test`` for
the second-to-last landed day (bootstrap ingests all history), serve the promoted
model, then (1) land a corrupted last day and check it is quarantined with nothing
downstream run, and (2) train a deliberately useless challenger and check it is not
promoted. The previously promoted model keeps serving throughout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import worlds

from pipelines import catalog, contracts
from pipelines.config import Settings

pytestmark = pytest.mark.e2e


@dataclass
class World:
    settings: Settings
    env: dict[str, str]
    first_run: date
    last_day: date


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    data_dir = tmp_path_factory.mktemp("e2e")
    env = worlds.project_env(
        data_dir,
        CR_SAMPLE_USERS="160",
        CR_N_ESTIMATORS="80",
        CR_ABLATION="true",
        CR_ALS_EVERY_DAYS=str(Settings.model_fields["als_every_days"].default),
    )
    settings = Settings(data_dir=data_dir, sample_users=160)
    worlds.bootstrap(env)
    landed = catalog.LANDING.dates(settings)
    first_run, last_day = landed[-2], landed[-1]
    proc = worlds.dag_test(env, first_run)
    assert catalog.SUMMARY.exists(settings, date=first_run), (
        f"DAG run wrote no summary:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    )
    return World(settings, env, first_run, last_day)


def _summary(world: World, day: date) -> catalog.Summary:
    return catalog.SUMMARY.load(world.settings, date=day)


def _pointer(world: World) -> catalog.ProductionPointer:
    return catalog.PRODUCTION.load(world.settings)


def test_dag_run_trains_evaluates_and_promotes(world):
    summary = _summary(world, world.first_run)
    assert summary.logical_date == world.first_run
    assert summary.dataset["name"] == "ml-1m" and summary.dataset["users"] == 160
    assert summary.validation.passed is True
    assert Path(summary.validation.data_docs).exists()
    metrics = summary.metrics
    for name in ("model", "random", "popularity"):
        assert set(metrics[name]) == {"ndcg@10", "map@10", "recall@10", "queries"}
        assert metrics[name]["queries"] > 20
    assert metrics["production"] is None  # the first run has no champion
    assert (
        metrics["model"]["ndcg@10"]
        > metrics["popularity"]["ndcg@10"]
        > metrics["random"]["ndcg@10"]
    )
    assert summary.gate.passed is True and summary.promoted is True
    assert _pointer(world).tag == summary.model_tag
    assert summary.infra_validation.passed is True
    assert summary.infra_validation.tag == summary.model_tag  # the refit was validated
    for task in ("ingest", "validate", "features", "materialize", "training_set", "train"):
        assert summary.timings_s[task] >= 0
    assert summary.timings_s["refit"] >= 0


def test_the_served_model_is_refit_through_the_logical_date(world):
    """The gate judged the candidate (trained up to the holdout); what is served is the
    same configuration refit on the training window and the holdout, through the run's date."""
    from pipelines import registry
    from pipelines.training_set import day_to_date

    s = world.settings
    facts = catalog.TRAINING_SET_FACTS.load(s, date=world.first_run)
    refit = catalog.REFIT.load(s, date=world.first_run)
    assert refit.refit is True and refit.trees == 80
    assert refit.last_day == world.first_run  # the served model's data ends on the date
    assert refit.first_day == day_to_date(facts.bounds["train_start"])
    holdout = pd.read_parquet(catalog.HOLDOUT.path(s, date=world.first_run))
    assert refit.queries == facts.train_queries + facts.holdout_queries
    assert facts.train_rows < refit.rows < facts.train_rows + len(holdout)  # capped negatives
    registration = catalog.REGISTRATION.load(s, date=world.first_run)
    served = registry.model_info(registration.model_tag, s)["metadata"]
    evaluated = registry.model_info(registration.evaluated_tag, s)["metadata"]
    assert registration.model_tag != registration.evaluated_tag
    assert served["role"] == "served" and evaluated["role"] == "evaluated"
    assert served["evaluated_model"] == registration.evaluated_tag
    assert served["trained_through"] == world.first_run.isoformat()
    assert evaluated["trained_through"] == day_to_date(facts.bounds["train_end"]).isoformat()
    assert served["gate"] == evaluated["gate"] and served["gate"]["passed"] is True
    # train fit it beside the candidate (local[2] holds two one-worker fits); refit kept it
    ahead = catalog.TRAINING.load(s, date=world.first_run).refit_ahead
    assert ahead is not None
    assert refit.model_dump(include=set(catalog.RefitFit.model_fields)) == ahead.model_dump()
    assert not catalog.REFIT_AHEAD.path(s, date=world.first_run).exists()


def test_a_refit_with_nothing_fit_ahead_fits_the_same_model(world, monkeypatch):
    """Re-run alone, ``refit`` finds no model fit ahead (it kept the first run's) and fits
    one itself: on the same rows, the same model as the one train fit beside the candidate."""
    import xgboost

    from pipelines import config, tasks

    worlds.use_env(monkeypatch, world.env)
    s = world.settings
    path = catalog.REFIT_CANDIDATE.path(s, date=world.first_run)
    before = catalog.REFIT.load(s, date=world.first_run)
    served = xgboost.Booster(model_file=str(path))
    try:
        again = tasks.refit(world.first_run)
    finally:
        config.get_settings.cache_clear()
    assert again["refit"] is True
    assert catalog.REFIT.load(s, date=world.first_run) == before
    holdout = pd.read_parquet(catalog.HOLDOUT.path(s, date=world.first_run))
    rows = holdout[contracts.MODEL_FEATURES].to_numpy(dtype="float32")
    refit = xgboost.Booster(model_file=str(path))
    np.testing.assert_allclose(refit.inplace_predict(rows), served.inplace_predict(rows), atol=1e-5)


def test_the_collaborative_and_content_signals_are_point_in_time_and_ablated(world):
    """ALS factors and content vectors reach the training rows from snapshots, and the
    report's ablation of each is the candidate's configuration retrained without it, on
    the same holdout."""
    from pipelines import factors
    from pipelines.features import day_number

    built = catalog.FEATURES.load(world.settings, date=world.first_run)
    lake_last = max(catalog.LAKE.dates(world.settings))
    assert built.factors.days[-1] == day_number(lake_last) + 1  # the serving snapshot
    assert built.factors.every_days == 180  # ML-1M's span: the grid step of 0 (auto)
    train = pd.read_parquet(catalog.TRAINING_SET.path(world.settings, date=world.first_run))
    assert train["als_score"].notna().mean() > 0.5
    assert train["content_sim"].notna().mean() > 0.5
    assert train["content_sim"].dropna().between(-1 - 1e-6, 1 + 1e-6).all()  # a cosine
    assert train["recent_sim"].notna().mean() > 0.5
    assert train["recent_sim"].dropna().between(-1 - 1e-6, 1 + 1e-6).all()
    # every training row's score comes from a snapshot fit strictly before its query day
    table = pd.read_parquet(catalog.FACTOR_TABLE.path(world.settings, kind="user"))
    snapshot_days = sorted(int(d) for d in table[factors.PARTITION].unique())
    first_query = int(train["event_timestamp"].min().timestamp()) // 86_400
    assert snapshot_days[0] <= first_query
    vectors = {*contracts.USER_VECTORS, *contracts.ITEM_VECTORS}
    assert not vectors & set(train.columns)  # only the scores are kept

    evaluation = catalog.EVALUATION.load(world.settings, date=world.first_run)
    per_query = pd.read_parquet(catalog.PER_QUERY.path(world.settings, date=world.first_run))
    report = catalog.REPORT.path(world.settings, date=world.first_run).read_text()
    assert "Signal ablation" in report
    for signal, inputs in contracts.SIGNALS.items():
        ablation = evaluation.ablation[signal]
        assert ablation.features == inputs
        assert ablation.lift == pytest.approx(
            evaluation.metrics["model"]["ndcg@10"] - ablation.ndcg_at_10, abs=1e-4
        )
        assert catalog.ABLATION_MODEL.exists(world.settings, date=world.first_run, signal=signal)
        without = per_query[f"without {signal}"]
        assert without.mean() == pytest.approx(ablation.ndcg_at_10, abs=1e-4)
        assert f"without {signal}" in report
    assert set(evaluation.ablation) == {"collaborative", "content"}


def test_each_stage_records_its_memory_and_cpu(world):
    costs = catalog.RESOURCES.load(world.settings, date=world.first_run).root
    assert set(costs) == set(_summary(world, world.first_run).timings_s)
    for cost in costs.values():
        assert cost.driver_peak_pss_mb > 50 and cost.driver_cpu_s >= 0
    for spark_stage in ("features", "training_set", "train"):  # Spark does their work
        assert costs[spark_stage].spark_peak_pss_mb > 100
        assert costs[spark_stage].spark_cpu_s > 1


def test_model_lineage_is_recorded(world):
    import xgboost

    from pipelines import feature_store, lineage, registry

    summary = _summary(world, world.first_run)
    meta = registry.model_info(summary.model_tag, world.settings)["metadata"]
    assert meta["feature_service"] == "ranker_v1"
    assert meta["validation"]["passed"] is True
    assert meta["features_validation"]["user"]["passed"] is True
    assert meta["features_validation"]["item"]["passed"] is True
    assert meta["training_set_validation"]["passed"] is True
    lake = catalog.LAKE.dates(world.settings)
    trained_on = [d for d in lake if d <= world.first_run]
    assert meta["partitions"]["first"] == trained_on[0].isoformat()
    assert meta["partitions"]["last"] == world.first_run.isoformat()
    assert meta["partitions"]["count"] == len(trained_on)
    assert meta["partitions"]["sha256"] == lineage.partitions(world.settings, trained_on)["sha256"]
    store = feature_store.open_store(world.settings)
    assert meta["feast_registry_sha256"] == lineage.registry_hash(store)
    assert meta["libraries"]["xgboost"] == xgboost.__version__
    assert set(meta["libraries"]) == set(lineage.LIBRARIES)
    assert len(meta["code"]["sha"]) == 40 and isinstance(meta["code"]["dirty"], bool)
    assert meta["gate"]["passed"] is True
    assert len(meta["training_set_hash"]) == 16
    assert meta["params"]["objective"] == "rank:ndcg"
    assert meta["metrics"]["model"]["ndcg@10"] == summary.metrics["model"]["ndcg@10"]
    # the ALS snapshots its rows could join, with the fingerprints of what they were fit on
    from pipelines.features import day_number

    manifest = catalog.FACTOR_MANIFEST.load(world.settings).root
    joinable = {d: v for d, v in manifest.items() if int(d) <= day_number(world.first_run) + 1}
    assert meta["factor_snapshots"] == joinable and len(joinable) >= 2


def test_rerun_of_the_same_date_overwrites(world):
    rows = pd.read_parquet(catalog.TRAINING_SET.path(world.settings, date=world.first_run))
    assert not rows.duplicated(["query_id", "item_id"]).any()
    raw = list(catalog.LAKE.path(world.settings, date=world.first_run).parent.glob("*"))
    assert len(raw) == 1  # one file per partition


def test_rerunning_a_date_reproduces_features_and_online_store(world, monkeypatch):
    from pipelines import config, tasks

    worlds.use_env(monkeypatch, world.env)
    try:
        tables = {k: catalog.FEATURE_TABLE.path(world.settings, kind=k) for k in ("user", "item")}
        before = {k: pd.read_parquet(path) for k, path in tables.items()}
        online_before = worlds.online_rows(world.settings)
        assert online_before
        tasks.build_features(world.first_run)
        tasks.materialize(world.first_run)
        for kind, frame in before.items():
            pd.testing.assert_frame_equal(pd.read_parquet(tables[kind]), frame)
        assert worlds.online_rows(world.settings) == online_before
    finally:
        config.get_settings.cache_clear()


def test_rerunning_the_training_set_reproduces_it_row_for_row(world, monkeypatch):
    """Negatives are drawn by seeded hashes, not by partition order: a re-run of the
    stage writes the same rows and the same lineage hash."""
    from pipelines import config, tasks

    worlds.use_env(monkeypatch, world.env)
    paths = [
        entry.path(world.settings, date=world.first_run)
        for entry in (catalog.TRAINING_SET, catalog.HOLDOUT)
    ]
    try:
        before = {path: pd.read_parquet(path) for path in paths}
        facts = catalog.TRAINING_SET_FACTS.load(world.settings, date=world.first_run)
        hash_before = facts.training_set_hash
        out = tasks.build_training_set(world.first_run)
        for path, frame in before.items():
            pd.testing.assert_frame_equal(pd.read_parquet(path), frame)
        assert out["training_set_hash"] == hash_before
        assert out["negatives"] == "sampled"  # ML-1M logs no impressions
    finally:
        config.get_settings.cache_clear()


def test_training_set_bench_runs_both_joins_on_the_same_rows(world, monkeypatch, tmp_path):
    """``make bench-training-set`` on the world: the Spark join returns every entity row;
    Feast's file store, the old path, returns at most that many."""
    from benchmarks import training_set_bench
    from pipelines import config

    worlds.use_env(monkeypatch, world.env)
    try:
        report = training_set_bench.run(world.first_run, tmp_path / "training_set_bench.json")
    finally:
        config.get_settings.cache_clear()
    assert report["entity_rows"] > 1000
    assert report["spark_as_of_join"]["rows_out"] == report["entity_rows"]
    file_store = report["feast_file_store"]
    assert file_store["rows_out"] > 0 and file_store["rows_lost"] >= 0
    assert file_store["rows_out"] + file_store["rows_lost"] >= report["entity_rows"]
    saved = json.loads((tmp_path / "training_set_bench.json").read_text())
    assert saved["speedup"] == report["speedup"] > 0
    assert saved["spark_as_of_join"]["driver_peak_pss_mb"] > 0


@pytest.fixture(scope="module")
def server(world):
    from pipelines.infra_validation import serve

    with serve(world.settings) as base:
        yield base


def _holdout_request(world: World) -> dict:
    holdout = pd.read_parquet(catalog.HOLDOUT.path(world.settings, date=world.first_run))
    from pipelines import ids

    users = ids.read_mapping(catalog.USER_IDS.path(world.settings))
    items = ids.read_mapping(catalog.ITEM_IDS.path(world.settings))
    qid = holdout["query_id"].iloc[0]
    group = holdout[holdout["query_id"] == qid]
    user = users.loc[users["internal_id"] == group["user_id"].iloc[0], "external_id"].iloc[0]
    lookup = dict(zip(items["internal_id"], items["external_id"], strict=True))
    return {"user_id": str(user), "item_ids": [str(lookup[i]) for i in group["item_id"]], "k": 5}


def test_server_ranks_a_real_user(world, server):
    body = _holdout_request(world)
    resp = httpx.post(f"{server}/rank", json=body, timeout=30)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["model_version"] == _pointer(world).tag
    assert out["fallback"] is False and out["unknown_item_ids"] == []
    scores = [i["score"] for i in out["items"]]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)
    assert {i["item_id"] for i in out["items"]} <= set(body["item_ids"])


def test_server_cold_start_and_bad_input(world, server):
    body = _holdout_request(world)
    cold = httpx.post(f"{server}/rank", json={**body, "user_id": "nobody"}, timeout=30).json()
    assert cold["fallback"] is True and len(cold["items"]) == 5
    unknown = httpx.post(
        f"{server}/rank", json={**body, "item_ids": [*body["item_ids"], "no such film"]}, timeout=30
    ).json()
    assert unknown["unknown_item_ids"] == ["no such film"]
    bad = httpx.post(f"{server}/rank", json={"user_id": "1m_1", "item_ids": []}, timeout=30)
    assert bad.status_code == 400 and "item_ids" in bad.text


def test_bad_partition_is_quarantined_and_production_keeps_serving(world, server):
    before = _pointer(world).tag
    landed = catalog.LANDING.path(world.settings, date=world.last_day)
    part = pd.read_parquet(landed)
    part.to_parquet(world.settings.data_dir / "good-last-day.parquet", index=False)
    part.loc[part.index[:1], "user_id"] = None
    part.loc[part.index[-1:], "rating"] = 7.0
    part.to_parquet(landed, index=False)

    worlds.dag_test(world.env, world.last_day)

    validation = catalog.VALIDATION.load(world.settings, date=world.last_day)
    assert validation.passed is False
    failed = {
        (f["expectation"], f["column"])
        for f in validation.suites["raw_interactions"].failed_expectations
    }
    assert ("expect_column_values_to_not_be_null", "user_id") in failed
    assert ("expect_column_values_to_be_between", "rating") in failed
    quarantined = catalog.QUARANTINE.path(world.settings, date=world.last_day)
    assert pd.read_parquet(quarantined).equals(part)  # kept, byte for byte in content
    assert not list(catalog.LAKE.path(world.settings, date=world.last_day).parent.glob("*.parquet"))
    for downstream in (
        catalog.FEATURES,
        catalog.MATERIALIZE,
        catalog.TRAINING_SET_FACTS,
        catalog.REGISTRATION,
    ):
        assert not downstream.exists(world.settings, date=world.last_day), downstream.template
    summary = _summary(world, world.last_day)
    assert summary.validation.passed is False and summary.promoted is False
    assert _pointer(world).tag == before
    resp = httpx.post(f"{server}/rank", json=_holdout_request(world), timeout=30)
    assert resp.status_code == 200 and resp.json()["model_version"] == before


def test_a_corrected_partition_is_reingested_cleanly(world, monkeypatch):
    from pipelines import config, tasks

    landed = catalog.LANDING.path(world.settings, date=world.last_day)
    (world.settings.data_dir / "good-last-day.parquet").replace(landed)  # upstream re-delivers
    worlds.use_env(monkeypatch, world.env)
    try:
        assert tasks.ingest(world.last_day)["partitions"] == 1
        assert tasks.validate(world.last_day)["passed"] is True
        raw = catalog.LAKE.path(world.settings, date=world.last_day)
        pd.testing.assert_frame_equal(pd.read_parquet(raw), pd.read_parquet(landed))
    finally:
        config.get_settings.cache_clear()


def test_the_next_days_features_are_incremental_and_equal_a_run_from_scratch(
    world, monkeypatch, tmp_path
):
    """On a copy of the world once the last day is in the lake: its features run reads
    only the days its windows need and adds one day of snapshots to the tables; a run from
    scratch on the same lake (no state) writes the same tables row for row."""
    import shutil
    from datetime import timedelta

    from pipelines import config, tasks

    copy = tmp_path / "data"
    shutil.copytree(world.settings.data_dir, copy)
    settings = Settings(data_dir=copy)
    worlds.use_env(monkeypatch, {**world.env, "CR_DATA_DIR": str(copy)})

    def tables() -> dict[str, pd.DataFrame]:
        return {
            kind: pd.read_parquet(catalog.FEATURE_TABLE.path(settings, kind=kind)).sort_values(
                [f"{kind}_id", "event_timestamp"], ignore_index=True
            )
            for kind in ("user", "item")
        }

    try:
        lake = catalog.LAKE.prefix(settings)
        lake_rows = sum(len(pd.read_parquet(p)) for p in lake.glob("*/*"))
        incremental = tasks.build_features(world.last_day)
        assert incremental["since"] == (world.first_run + timedelta(days=2)).isoformat()
        assert 0 < incremental["events_read"] < lake_rows / 2
        assert incremental["user_rows"] > 0
        after_increment = tables()
        shutil.rmtree(catalog.FEATURE_STATE.prefix(settings))
        scratch = tasks.build_features(world.last_day)
        assert scratch["since"] is None and scratch["events_read"] == lake_rows
        for kind, frame in tables().items():
            pd.testing.assert_frame_equal(after_increment[kind], frame)
            assert scratch[f"{kind}_rows"] == len(frame)
    finally:
        config.get_settings.cache_clear()


def test_worse_challenger_is_not_promoted(world, monkeypatch):
    from pipelines import config, tasks

    # the world's settings; the gate needs no ablation, which would train two more models
    worlds.use_env(monkeypatch, {**world.env, "CR_ABLATION": "false"})
    try:
        from pipelines import registry

        before = _pointer(world).tag
        tasks.train(world.first_run, shuffle_labels=True)
        evaluation = tasks.evaluate(world.first_run)
        metrics = evaluation["metrics"]
        assert metrics["production"] is not None
        # Production is a refit, trained into this holdout: its evaluated twin is scored.
        twin = registry.model_info(before, world.settings)["metadata"]["evaluated_model"]
        assert evaluation["production_scored_tag"] == twin != before
        assert metrics["model"]["ndcg@10"] < metrics["popularity"]["ndcg@10"]
        decision = tasks.gate(world.first_run)
        assert decision["passed"] is False and "popularity" in decision["reason"]
        stored = registry.list_models(world.settings)
        with pytest.raises(RuntimeError, match="refit is of another candidate"):
            tasks.register(world.first_run)  # the refit on disk is of the first candidate
        assert registry.list_models(world.settings) == stored  # refused before storing
        assert tasks.refit(world.first_run)["refit"] is False
        registered = tasks.register(world.first_run)
        assert registered["model_tag"] == registered["evaluated_tag"]  # nothing was refit
        assert tasks.infra_validate(world.first_run)["skipped"] is True
        promotion = tasks.promote(world.first_run)
        assert promotion["promoted"] is False
        assert _pointer(world).tag == before
    finally:
        config.get_settings.cache_clear()


def test_served_feature_skew_is_detected_and_blocks_promotion(world, monkeypatch):
    """The server logs what it served; serving from a stale item table shows up as skew."""
    from pipelines import config, tasks
    from pipelines.feature_store import open_store
    from serving.online import FastReader, ServedLog

    worlds.use_env(monkeypatch, {**world.env, "CR_ABLATION": "false"})
    monkeypatch.setenv("CR_SERVING_LOG_SAMPLE_RATE", "1.0")
    config.get_settings.cache_clear()
    try:
        settings = config.get_settings()
        holdout = pd.read_parquet(catalog.HOLDOUT.path(settings, date=world.first_run))
        pairs = holdout.groupby("query_id").head(5)[["user_id", "item_id"]].to_numpy()[:200]
        monkeypatch.setenv("CR_SKEW_ROWS", str(len(pairs)))  # compare exactly the last phase
        config.get_settings.cache_clear()
        settings = config.get_settings()
        reader, log = FastReader(open_store(settings), settings), ServedLog(settings)

        def serve_all() -> None:
            for user, item in pairs:
                log.maybe_log(int(user), [int(item)], reader.read(int(user), [int(item)]), "t")

        serve_all()  # what the fresh online store serves matches offline
        assert tasks.monitor(world.first_run)["max_mismatch"] == 0.0

        # Stale table: the popularity the server holds is a day behind (shifted values).
        col = reader.items[:, 0].copy()
        reader.items[:, 0] = col + 1.0
        reader.refresh = lambda: False  # keep the stale table in memory
        serve_all()
        summary = tasks.monitor(world.first_run)
        assert summary["max_mismatch"] > 0.5
        tasks.evaluate(world.first_run)
        decision = tasks.gate(world.first_run)
        assert decision["passed"] is False
        assert "skew" in decision["reason"] and "item_pop_7d" in decision["reason"]
    finally:
        for path in world.settings.serving_log_dir.glob("served*"):
            path.unlink()
        config.get_settings.cache_clear()
