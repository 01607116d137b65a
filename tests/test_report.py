"""The HTML run report renders from a run directory's outputs, complete or not."""

from __future__ import annotations

import base64
import re
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from pipelines import catalog, contracts
from pipelines.report import _feature_name, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DAY = date(2003, 2, 28)  # the full run's logical date
DOCS = "/srv/gx/uncommitted/data_docs/local_site/index.html"
SLICES = ["cold", "heavy", "genre:Drama"]
FAILED_EXPECTATION = {
    "expectation": "expect_column_values_to_not_be_null",
    "column": "user_id",
    "unexpected_count": 12,
    "element_count": 500,
}


def _validation(passed: bool) -> dict:
    failed = [] if passed else [FAILED_EXPECTATION]
    return {
        "passed": passed,
        "suites": {
            "raw_interactions": {
                "success": passed,
                "evaluated": 10,
                "successful": 10 - len(failed),
                "failed_expectations": failed,
            }
        },
        "rows": 500,
        "partitions": ["2003-02-27", "2003-02-28"],
        "data_docs": DOCS,
    }


def _metrics(ndcg: float, map_: float, recall: float) -> dict:
    return {"ndcg@10": ndcg, "map@10": map_, "recall@10": recall, "queries": 40}


@pytest.fixture
def full_run(tmp_path: Path) -> Path:
    """A data directory whose run of ``DAY`` has every output, from a real (tiny) xgboost
    ranker; the JSON artifacts are saved through the catalog, so they match its models."""
    data_dir = tmp_path
    catalog.CANDIDATE.path(data_dir, date=DAY).parent.mkdir(parents=True)  # the run directory
    rng = np.random.default_rng(0)
    n_queries, per_query = 40, 12
    n_features = len(contracts.MODEL_FEATURES)
    x = rng.random((n_queries * per_query, n_features)).astype(np.float32)
    labels = np.where(x[:, 0] + 0.3 * rng.random(len(x)) > 0.9, rng.integers(1, 6, len(x)), 0)
    qid = np.repeat(np.arange(n_queries), per_query)
    matrix = xgb.DMatrix(x, label=labels, qid=qid, feature_names=contracts.MODEL_FEATURES)
    booster = xgb.train(
        {"objective": "rank:ndcg", "max_depth": 3, "eta": 0.3}, matrix, num_boost_round=8
    )
    booster.save_model(catalog.CANDIDATE.path(data_dir, date=DAY))

    holdout = pd.DataFrame(x, columns=contracts.MODEL_FEATURES)
    holdout["label"] = labels.astype(float)
    holdout["query_id"] = qid
    holdout.to_parquet(catalog.HOLDOUT.path(data_dir, date=DAY), index=False)

    per_query_ndcg = pd.DataFrame(
        {
            "query_id": np.arange(n_queries),
            "model": rng.uniform(0.3, 0.9, n_queries),
            "random": rng.uniform(0.0, 0.4, n_queries),
            "popularity": rng.uniform(0.2, 0.6, n_queries),
            "production": rng.uniform(0.3, 0.9, n_queries),
            "cold": np.arange(n_queries) < 5,
            "heavy": np.arange(n_queries) >= 20,
            "genre:Drama": np.arange(n_queries) % 2 == 0,
        }
    )
    per_query_ndcg.to_parquet(catalog.PER_QUERY.path(data_dir, date=DAY), index=False)

    catalog.EVALUATION.save(
        data_dir,
        {
            "metrics": {
                "model": _metrics(0.6123, 0.5012, 0.7345),
                "random": _metrics(0.1987, 0.1234, 0.2876),
                "popularity": _metrics(0.4211, 0.3322, 0.5433),
                "production": _metrics(0.6001, 0.4899, 0.7222),
            },
            "production_tag": "content_ranker:champion01",
            "slices": SLICES,
        },
        date=DAY,
    )
    catalog.GATE.save(
        data_dir,
        {
            "passed": False,
            "reason": "failed: no regression on slice cold ({...})",
            "checks": [
                {"check": "model ndcg@10 > popularity ndcg@10", "passed": True, "detail": "x"},
                {"check": "no regression on slice cold", "passed": False, "detail": "y"},
            ],
            "significance": {
                "queries": 40,
                "mean_diff": 0.01221,
                "upper_95": 0.04567,
                "lower_95": -0.02111,
                "wilcoxon_p_less": 0.8123,
                "significantly_worse": False,
            },
            "slices": [
                {
                    "slice": "cold",
                    "queries": 5,
                    "model": 0.3,
                    "production": 0.5,
                    "regression": True,
                },
                {
                    "slice": "heavy",
                    "queries": 20,
                    "model": 0.62,
                    "production": 0.6,
                    "regression": False,
                },
                {
                    "slice": "genre:Drama",
                    "queries": 0,
                    "model": None,
                    "production": None,
                    "regression": False,
                },
            ],
        },
        date=DAY,
    )
    catalog.VALIDATION.save(data_dir, _validation(passed=True), date=DAY)
    catalog.TIMINGS.save(data_dir, {"ingest": 0.5, "validate": 3.25, "train": 12.75}, date=DAY)
    return data_dir


def _images(text: str) -> list[bytes]:
    encoded = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)
    return [base64.b64decode(e, validate=True) for e in encoded]


def test_full_run_report_has_every_section(full_run: Path) -> None:
    path = write_report(full_run, DAY)

    assert path == catalog.REPORT.path(full_run, date=DAY)
    text = path.read_text()
    for heading in (
        "Run report",
        "Metrics",
        "Slices",
        "Per-query NDCG@10",
        "Champion/challenger significance",
        "Feature importance",
        "Score distributions",
        "Data validation",
        "Timings",
    ):
        assert re.search(rf"<h[12]>{re.escape(heading)}", text), heading
    assert "2003-02-28" in text
    assert "not promoted" not in text  # no catalog.PROMOTION: the gate decision is shown
    assert "gate failed" in text
    for value in ("0.6123", "0.5012", "0.7345", "0.4211", "0.6001", "0.1987"):
        assert value in text
    assert "0.0122" in text and "0.0457" in text and "0.8123" in text  # significance
    assert 'class="regression"' in text and "Regressing slices: cold" in text
    assert f'href="file://{DOCS}"' in text
    assert "12.75" in text and "16.50" in text  # a timing and the total
    images = _images(text)
    assert len(images) >= 4
    assert all(img.startswith(PNG_SIGNATURE) for img in images)


def test_rerun_overwrites_and_tolerates_a_missing_champion(full_run: Path) -> None:
    evaluation = catalog.EVALUATION.load(full_run, date=DAY)
    evaluation.metrics["production"] = None
    evaluation.production_tag = None
    catalog.EVALUATION.save(full_run, evaluation, date=DAY)
    gate = catalog.GATE.load(full_run, date=DAY)
    gate.significance = None
    catalog.GATE.save(full_run, gate, date=DAY)
    report = catalog.REPORT.path(full_run, date=DAY)
    assert write_report(report.parent) == report  # given the run directory, as the CLI does

    text = write_report(full_run, DAY).read_text()

    assert "No champion yet" in text
    assert "significance was not tested" in text
    assert not list(report.parent.glob("*.tmp"))  # no temporary file left


def test_failed_validation_run_still_renders(tmp_path: Path) -> None:
    day = date(2003, 3, 1)
    catalog.VALIDATION.save(tmp_path, _validation(passed=False), date=day)
    catalog.TIMINGS.save(tmp_path, {"ingest": 0.1, "validate": 2.0}, date=day)

    text = write_report(tmp_path, day).read_text()

    assert "2003-03-01" in text
    assert "validation failed" in text
    assert "expect_column_values_to_not_be_null" in text and "user_id" in text
    assert "<h2>Data validation</h2>" in text and "<h2>Timings</h2>" in text
    assert "<h2>Metrics</h2>" not in text and "Not available for this run" in text
    assert DOCS in text


def test_report_renders_in_headless_chromium(full_run: Path, chromium_dom) -> None:
    dom = chromium_dom(write_report(full_run, DAY))
    assert "<title>Run report 2003-02-28</title>" in dom
    assert "Feature importance" in dom


def test_unnamed_booster_features_map_to_model_features() -> None:
    assert _feature_name("f0") == contracts.MODEL_FEATURES[0]
    assert _feature_name(f"f{len(contracts.MODEL_FEATURES) - 1}") == contracts.MODEL_FEATURES[-1]
    assert _feature_name("genre_match") == "genre_match"


def test_model_card_and_ndcg_history(full_run: Path) -> None:
    """The card names the data, the served refit and the lift; the history has every run."""
    earlier = date(2003, 2, 27)
    catalog.EVALUATION.save(
        full_run,
        {
            "metrics": {"model": _metrics(0.5555, 0.4, 0.5), "popularity": _metrics(0.4, 0.3, 0.4)},
            "production_tag": None,
            "slices": [],
        },
        date=earlier,
    )
    catalog.TRAINING_SET_FACTS.save(
        full_run,
        {
            "train_rows": 900,
            "train_queries": 60,
            "holdout_rows": 480,
            "holdout_queries": 40,
            "unpairable_queries_dropped": 0,
            "negatives": "sampled",
            "training_set_hash": "0" * 16,
            "bounds": {"train_start": 11700, "train_end": 12000, "holdout_end": 12090},
            "partitions": {"first": "2000-04-25", "last": "2003-02-28", "count": 1000},
        },
        date=DAY,
    )
    catalog.REFIT.save(
        full_run,
        {
            "refit": True,
            "reason": "the gate passed",
            "candidate_sha256": "0" * 64,
            "rows": 1200,
            "queries": 100,
            "first_day": date(2002, 1, 13),
            "last_day": DAY,
            "trees": 5,
        },
        date=DAY,
    )
    text = write_report(full_run, DAY).read_text()
    card = text[text.index("<h2>Model card") : text.index("<h2>Metrics")]
    assert "2000-04-25 to 2003-02-28 (1000)" in card
    assert "refit on 100 queries from 2002-01-13 to 2003-02-28" in card
    evaluation = catalog.EVALUATION.load(full_run, date=DAY).metrics
    lift = evaluation["model"]["ndcg@10"] / evaluation["popularity"]["ndcg@10"]
    assert f"{lift:.2f}× popularity" in card
    assert "known limits" in card and "cold" in card  # the gate's slices are named
    history = text[text.index("<h2>NDCG@10 history") :]
    assert "2003-02-27" in history and "0.5555" in history and "2003-02-28" in history
    assert history.index("2003-02-27") < history.index("2003-02-28")
