"""The pure parts of ``make bench-pipeline`` (benchmarks/pipeline_bench.py) on hand-made
records: exponents, growth, targets and the report's layout. No Spark, no timing."""

from __future__ import annotations

import math
from datetime import date
from pathlib import Path

import pytest

from benchmarks import pipeline_bench as pb
from pipelines import catalog


def size(
    events: int,
    stages: dict[str, float],
    *,
    ok: bool = True,
    dag_s: float | None = None,
    pss: float = 900.0,
    ndcg: dict | None = None,
) -> dict:
    """A synthetic size's record as ``run_size`` leaves it."""
    return {
        "label": pb.size_label(events),
        "events_requested": events,
        "events": events,
        "ok": ok,
        "dag_s": dag_s if dag_s is not None else sum(stages.values()) + 30,
        "stages": {s: {"wall_s": t, "driver_peak_pss_mb": pss} for s, t in stages.items()},
        "driver_peak_pss_mb": pss,
        "ndcg@10": ndcg or {"model": 0.45, "oracle": 0.5, "popularity": 0.3, "random": 0.1},
    }


def ml1m_record(speedup: float = 5.0, pss: float = 700.0, make_run_s: float = 200.0) -> dict:
    return {
        "label": "ml-1m",
        "ok": True,
        "demo_ok": True,
        "make_run_s": make_run_s,
        "wheel": "reused /somewhere",
        "stages": {"training_set": {"wall_s": 20.0, "driver_peak_pss_mb": 1500}},
        "training_set_comparison": {
            "speedup": speedup,
            "spark_as_of_join": {"wall_s": 10.0, "driver_peak_pss_mb": pss},
            "feast_file_store": {"wall_s": 10.0 * speedup},
        },
    }


def full_run(**overrides) -> tuple[dict, list[dict]]:
    """ML-1M and 1M/4M/16M sizes that meet every target; ``overrides`` replace sizes."""
    sizes = [
        size(1_000_000, {"ingest": 10.0, "train": 40.0, "gate": 0.5}),
        size(4_000_000, {"ingest": 40.0, "train": 160.0, "gate": 0.5}),
        size(16_000_000, {"ingest": 160.0, "train": 640.0, "gate": 1.0}, pss=1000.0),
    ]
    return overrides.get("ml1m", ml1m_record()), overrides.get("sizes", sizes)


def test_labels():
    assert pb.size_label(1_000_000) == "1M"
    assert pb.size_label(16_000_000) == "16M"
    assert pb.size_label(200_000) == "200k"
    assert pb.size_label(1_234) == "1234"


def test_exponent_is_one_for_linear_and_two_for_quadratic_times():
    assert pb.exponent(4e6, 10.0, 16e6, 40.0) == 1.0
    assert pb.exponent(1e6, 3.0, 2e6, 12.0) == 2.0
    assert pb.exponent(1e6, 5.0, 4e6, 5.0) == 0.0
    assert pb.exponent(1e6, 5.0, 4e6, 10.0) == pytest.approx(0.5)
    assert pb.exponent(1e6, 0.0, 4e6, 10.0) is None  # no log of 0
    assert pb.exponent(1e6, 1.0, 1e6, 2.0) is None  # one size: no slope


def test_growth_uses_the_two_largest_sizes_that_ran_and_leaves_out_noise():
    sizes = [
        size(1_000_000, {"ingest": 100.0, "train": 100.0, "gate": 0.1}),
        size(4_000_000, {"ingest": 10.0, "train": 10.0, "gate": 0.2}),
        size(16_000_000, {"ingest": 40.0, "train": 80.0, "gate": 1.6}),
        size(64_000_000, {"ingest": 1.0}, ok=False),
    ]
    got = pb.growth(sizes)
    assert got["between_events"] == [4_000_000, 16_000_000]
    assert got["exponents"]["ingest"] == 1.0
    assert got["exponents"]["train"] == 1.5
    assert got["exponents"]["gate"] == 1.5  # reported ...
    assert got["excluded_as_noise"] == ["gate"]  # ... but under 2 s at both sizes
    assert got["max_exponent"] == 1.5 and got["max_stage"] == "train"
    assert got["total_exponent"] is not None


def test_growth_with_fewer_than_two_sizes_has_no_exponent():
    got = pb.growth([size(1_000_000, {"ingest": 1.0}), size(4_000_000, {}, ok=False)])
    assert got["exponents"] == {} and got["max_exponent"] is None


def test_every_target_met_on_a_good_run():
    ml1m, sizes = full_run()
    got = pb.targets(ml1m, sizes, pb.growth(sizes))
    measurable = {k: t for k, t in got.items() if k != "make_test_fresh_clone_le_30min"}
    assert all(t["met"] is True for t in measurable.values()), got
    for t in got.values():
        assert list(t)[:3] == ["value", "goal", "met"]
    assert got["growth_exponent_4m_to_16m_le_1_2"]["value"] == 1.0
    assert got["driver_pss_le_3gb_16m_le_1_3x_1m"]["value"][
        "largest_over_smallest"
    ] == pytest.approx(1000 / 900, abs=1e-3)
    quality = got["model_quality_16m"]["value"]
    assert quality["model_over_oracle"] == 0.9 and quality["model_over_popularity"] == 1.5


def test_make_test_cannot_be_measured_here():
    ml1m, sizes = full_run()
    got = pb.targets(ml1m, sizes, pb.growth(sizes))["make_test_fresh_clone_le_30min"]
    assert got["value"] is None and got["met"] is None
    assert ".ci/run" in got["source"]


@pytest.mark.parametrize(
    ("name", "ml1m", "sizes"),
    [
        ("training_set_ml1m_4x_faster_pss_le_1gb", ml1m_record(speedup=3.9), None),
        ("training_set_ml1m_4x_faster_pss_le_1gb", ml1m_record(pss=1025), None),
        ("make_run_ml1m_le_4min", ml1m_record(make_run_s=241), None),
        (
            "dag_16m_le_30min",
            None,
            [size(1_000_000, {"a": 10.0}), size(16_000_000, {"a": 160.0}, dag_s=1801)],
        ),
        (
            "driver_pss_le_3gb_16m_le_1_3x_1m",
            None,
            [size(1_000_000, {"a": 10.0}, pss=1000), size(16_000_000, {"a": 160.0}, pss=1400)],
        ),
        (
            "driver_pss_le_3gb_16m_le_1_3x_1m",
            None,
            [size(1_000_000, {"a": 10.0}, pss=3000), size(16_000_000, {"a": 160.0}, pss=3100)],
        ),
        (
            "growth_exponent_4m_to_16m_le_1_2",
            None,
            [size(4_000_000, {"a": 10.0}), size(16_000_000, {"a": 10.0 * 4**1.25})],
        ),
        (
            "model_quality_16m",
            None,
            [
                size(
                    16_000_000,
                    {"a": 1.0},
                    ndcg={"model": 0.39, "oracle": 0.5, "popularity": 0.2, "random": 0.1},
                )
            ],
        ),
        (
            "model_quality_16m",
            None,
            [
                size(
                    16_000_000,
                    {"a": 1.0},
                    ndcg={"model": 0.45, "oracle": 0.5, "popularity": 0.35, "random": 0.1},
                )
            ],
        ),
    ],
)
def test_a_missed_target_reports_met_false(name, ml1m, sizes):
    default_ml1m, default_sizes = full_run()
    ml1m, sizes = ml1m or default_ml1m, sizes or default_sizes
    assert pb.targets(ml1m, sizes, pb.growth(sizes))[name]["met"] is False


def test_a_failed_size_fails_its_targets():
    sizes = [
        size(1_000_000, {"ingest": 10.0}),
        size(4_000_000, {"ingest": 40.0}),
        size(16_000_000, {"ingest": 5.0}, ok=False, dag_s=60),
    ]
    got = pb.targets(ml1m_record(), sizes, pb.growth(sizes))
    assert got["dag_16m_le_30min"]["met"] is False  # fast, but it failed
    assert got["driver_pss_le_3gb_16m_le_1_3x_1m"]["met"] is False
    assert got["growth_exponent_4m_to_16m_le_1_2"]["met"] is False
    assert got["growth_exponent_4m_to_16m_le_1_2"]["value"] == 1.0  # 1M to 4M, what ran
    assert got["model_quality_16m"]["met"] is False


def test_without_ml1m_its_targets_are_not_measured():
    _, sizes = full_run()
    got = pb.targets(None, sizes, pb.growth(sizes))
    for name in ("training_set_ml1m_4x_faster_pss_le_1gb", "make_run_ml1m_le_4min"):
        assert got[name]["value"] is None and got[name]["met"] is None


def test_other_sizes_than_the_targets_name_are_noted():
    sizes = [size(50_000, {"a": 1.0}), size(200_000, {"a": 4.0})]
    got = pb.targets(None, sizes, pb.growth(sizes))
    assert got["dag_16m_le_30min"]["at_events"] == 200_000
    assert "not 16,000,000" in got["dag_16m_le_30min"]["note"]
    assert "note" in got["driver_pss_le_3gb_16m_le_1_3x_1m"]


def test_report_ends_with_targets():
    ml1m, sizes = full_run()
    report = pb.assemble({"measured_at": "now"}, ml1m, sizes, 12.34)
    assert list(report)[0] == "measured_at"
    assert list(report)[-1] == "targets"
    assert report["duration_s"] == 12.3


def _summary(day: date, evaluation: catalog.Evaluation, promoted: bool) -> catalog.Summary:
    """A run's ``catalog.SUMMARY`` with nothing but what ``run_facts`` reads filled in."""
    return catalog.Summary(
        run_id=f"manual__{day.isoformat()}",
        logical_date=day,
        dataset={},
        validation=catalog.SummaryValidation(passed=True, suites={}, data_docs=None),
        metrics=evaluation.metrics,
        gate=catalog.SummaryGate(passed=promoted, reason="gate", significance=None, slices=None),
        model_tag=None,
        promoted=promoted,
        promotion_reason=None,
        infra_validation=None,
        training_set=None,
        monitoring=None,
        timings_s={},
        resources={},
        report=str(catalog.REPORT.path(Path("/data"), date=day)),
    )


def test_run_facts_reads_stage_costs_in_dag_order():
    timings = catalog.Timings({"train": 30.0, "ingest": 2.0})
    resources = catalog.Resources.model_validate(
        {
            "ingest": {
                "driver_peak_pss_mb": 300,
                "spark_peak_pss_mb": 0,
                "driver_cpu_s": 1.5,
                "spark_cpu_s": 0.0,
            },
            "train": {
                "driver_peak_pss_mb": 500,
                "spark_peak_pss_mb": 2000,
                "driver_cpu_s": 4.0,
                "spark_cpu_s": 55.0,
            },
        }
    )
    evaluation = catalog.Evaluation(
        metrics={
            "model": {"ndcg@10": 0.4},
            "popularity": {"ndcg@10": 0.2},
            "random": {"ndcg@10": 0.1},
            "production": None,
        },
        production_tag=None,
        slices=[],
    )
    summary = _summary(date(2026, 6, 30), evaluation, promoted=True)
    got = pb.run_facts(timings, resources, evaluation, summary)
    assert list(got["stages"]) == ["ingest", "train"]
    assert got["stages"]["train"] == {"wall_s": 30.0} | resources.root["train"].model_dump()
    assert got["stage_sum_s"] == 32.0
    assert got["driver_peak_pss_mb"] == 500 and got["spark_peak_pss_mb"] == 2000
    assert got["ndcg@10"] == {"model": 0.4, "oracle": None, "popularity": 0.2, "random": 0.1}
    assert got["promoted"] is True
    empty = pb.run_facts(None, None, None, None)
    assert empty["stages"] == {} and empty["driver_peak_pss_mb"] is None


def test_a_synthetic_feed_is_reused_only_with_the_same_events_and_seed():
    facts = catalog.SynthFacts(
        config={"events": 1_000_000, "seed": 42},
        events=999_990,
        positive_share=0.3,
        users=5_000,
        items=20_000,
        creators=2_000,
        first_date=date(2026, 1, 2),
        last_date=date(2026, 6, 30),
    )
    assert pb.synth_reusable(facts, 1_000_000, 42)
    assert not pb.synth_reusable(facts, 1_000_000, 7)
    assert not pb.synth_reusable(facts, 4_000_000, 42)
    assert not pb.synth_reusable(None, 1_000_000, 42)


def test_goals_match_the_issue():
    assert pb.GOALS["dag_wall_s_max"] == 1800 and pb.GOALS["make_run_s_max"] == 240
    assert pb.GOALS["driver_pss_mb_max"] == 3 * 1024
    assert math.isclose(pb.GOALS["growth_exponent_max"], 1.2)
