"""The pure parts of ``make bench-serve`` (benchmarks/serve_bench.py) on hand-made phase
results: the stop rule, the server's outcome counters, redis-vs-SQLite ratios and the
target. No server, no Redis."""

from __future__ import annotations

from collections import Counter

import pytest

from benchmarks import serve_bench as sb


def step(rate: int | None, p99: float, *, errors: int = 0, fallback: int = 0, c: int | None = None):
    """A loadgen summary as ``run_path`` records it (``served`` as the server counted)."""
    r = {"rate": rate, "concurrency": c, "p99_ms": p99, "p50_ms": p99 / 2, "rps": 1.0}
    r["errors"] = errors
    r["served"] = {"ranked": 100, "fallback": fallback, "fallback_share": fallback / 100}
    if rate is not None:
        r["pass"] = sb.passes(r)
    return r


def path(steps: list[dict], concurrency: dict[int, float] | None = None) -> dict:
    fixed = [step(None, p99, c=c) for c, p99 in (concurrency or {1: 3.0}).items()]
    return {
        "concurrency": fixed,
        "steps": steps,
        "max_rate_p99_le_10ms": sb.max_passing_rate(steps),
    }


METRICS = """\
# HELP rank_request_seconds Time inside /rank, by phase (features, model, total).
# TYPE rank_request_seconds histogram
rank_request_seconds_bucket{le="0.001",model_version="m:1",path="fast",phase="total"} 3.0
rank_request_seconds_count{model_version="m:1",path="fast",phase="features"} 120.0
rank_request_seconds_count{model_version="m:1",path="fast",phase="total"} 120.0
rank_request_seconds_count{model_version="m:2",path="fast",phase="total"} 30.0
# TYPE rank_outcomes_total counter
rank_outcomes_total{model_version="m:1",outcome="fallback"} 4.0
rank_outcomes_total{model_version="m:2",outcome="fallback"} 1.0
rank_outcomes_total{model_version="m:1",outcome="store_unavailable"} 2.0
rank_outcomes_total{model_version="m:1",outcome="stale"} 50.0
"""


def test_outcomes_sum_the_total_phase_and_the_fallbacks_over_model_versions():
    counts = sb.count_outcomes(METRICS)
    assert counts == Counter(ranked=150, fallback=5, store_unavailable=2)
    later = counts + Counter(ranked=50, fallback=5)
    assert sb.served(counts, later) == {
        "ranked": 50,
        "fallback": 5,
        "store_unavailable": 0,
        "fallback_share": 0.1,
    }
    assert sb.served(counts, counts)["fallback_share"] is None


def test_the_steps_go_on_to_the_compare_rate_and_the_max_rate_stops_at_the_first_failure(
    monkeypatch,
):
    p99 = {10: 2.0, 50: 12.0, 100: 4.0, 200: 15.0, 300: 3.0}
    ran = []

    def run_load(port, route, bodies, plan, **spec):
        ran.append(spec.get("rate"))
        return step(spec.get("rate"), p99.get(spec.get("rate"), 1.0))

    monkeypatch.setattr(sb, "run_load", run_load)
    monkeypatch.setattr(sb, "outcomes", lambda port: Counter())
    monkeypatch.setattr(sb, "RssSampler", _NoRss)
    plan = sb.Plan(concurrency=[1], rates=list(p99))
    result = sb.run_path("redis", 1, "/rank", plan.rates, [], plan, [], min_rate=100)
    assert [s["rate"] for s in result["steps"]] == [10, 50, 100, 200]
    assert result["max_rate_p99_le_10ms"] == 10  # 100 passed, but after the failing 50
    assert all("served" in s for s in result["steps"] + result["concurrency"])

    ran.clear()
    result = sb.run_path("fast", 1, "/rank", plan.rates, [], plan, [])
    assert [s["rate"] for s in result["steps"]] == [10, 50]


class _NoRss:
    def __init__(self, roots):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def result(self):
        return {"peak": 0.0, "mean": 0.0, "samples": 0}


def test_redis_vs_sqlite_at_every_shared_rate_and_concurrency():
    paths = {
        "fast": path([step(10, 2.0), step(50, 3.0), step(100, 4.0)], {1: 2.0, 4: 5.0}),
        "redis": path([step(10, 2.5), step(50, 4.0), step(100, 5.9)], {1: 3.0}),
    }
    cmp = sb.redis_vs_sqlite(paths, compare_rate=100)
    assert [r["rate"] for r in cmp["at_rate"]] == [10, 50, 100]
    assert cmp["at_compare_rate"]["ratio"] == 1.48
    assert cmp["at_compare_rate"]["sqlite_p99_ms"] == 4.0
    assert list(cmp["at_concurrency"]) == ["1"]
    assert cmp["at_concurrency"]["1"]["ratio"] == 1.5
    assert sb.redis_within_goal(cmp) is True
    assert sb.targets(paths, {"at_rate": None}, None, cmp)["redis_p99_within_1_5x_sqlite_at_100rps"]


@pytest.mark.parametrize(
    ("redis_100", "met"),
    [
        (step(100, 6.1), False),  # over 1.5x
        (step(100, 5.0, errors=1), False),  # a failed request
        (step(100, 5.0, fallback=3), False),  # popularity answers flatter the tail
        (None, None),  # never ran at 100 RPS
    ],
)
def test_the_redis_target_needs_a_clean_step_at_the_compare_rate(redis_100, met):
    paths = {
        "fast": path([step(50, 3.0), step(100, 4.0)]),
        "redis": path([step(50, 3.5)] + ([redis_100] if redis_100 else [])),
    }
    assert sb.redis_within_goal(sb.redis_vs_sqlite(paths, 100)) is met


def test_no_redis_phase_is_not_measured():
    paths = {"fast": path([step(100, 4.0)])}
    assert (
        sb.targets(paths, {"at_rate": None}, None)["redis_p99_within_1_5x_sqlite_at_100rps"] is None
    )


def test_the_redis_connection_keeps_the_cluster_options_on_the_private_port():
    conn = sb.redis_connection(6400)
    host, *options = conn.split(",")
    assert host == "127.0.0.1:6400"
    assert any(o.startswith("socket_timeout=") for o in options)  # infra/cluster's bound
    assert ":6379" not in conn  # never the machine's shared Redis
