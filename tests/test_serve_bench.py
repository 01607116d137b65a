"""``make bench-serve`` (benchmarks/serve_bench.py, loadgen.py, floor.py) in parts: on
hand-made phase results, the stop rule, the server's outcome counters, the ratios to
SQLite and to the floor, and the targets; for real, the CPU accounting over a process tree
that burns CPU, the body sampling over id maps, and the floor server on a free port. No
BentoML server, no Redis."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pandas as pd
import pytest

from benchmarks import floor
from benchmarks import serve_bench as sb
from benchmarks.loadgen import cpu_times, cpu_used
from pipelines import catalog
from pipelines.config import Settings
from pipelines.ids import update_mapping
from pipelines.infra_validation import free_port


def step(
    rate: int | None,
    p99: float,
    *,
    errors: int = 0,
    fallback: int = 0,
    c: int | None = None,
    cpu: float | None = 1.0,
):
    """A loadgen summary as ``run_path`` records it (``served`` as the server counted)."""
    r = {"rate": rate, "concurrency": c, "p99_ms": p99, "p50_ms": p99 / 2, "rps": 1.0}
    r["errors"] = errors
    r["served"] = {"ranked": 100, "fallback": fallback, "fallback_share": fallback / 100}
    r["cpu_ms_per_request"] = cpu
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


def test_outcomes_sum_the_total_phase_and_each_outcome_over_model_versions():
    counts = sb.count_outcomes(METRICS)
    assert counts == Counter(ranked=150, fallback=5, store_unavailable=2, stale=50)
    later = counts + Counter(ranked=50, fallback=5, stale=20)
    assert sb.served(counts, later) == {
        "ranked": 50,
        "fallback": 5,
        "stale": 20,
        "store_unavailable": 0,
        "fallback_share": 0.1,
        "stale_share": 0.4,
    }
    assert sb.served(counts, counts)["fallback_share"] is None
    assert sb.served(counts, counts)["stale_share"] is None


def test_a_paths_served_total_sums_its_counted_phases_only():
    base = Counter(ranked=10, fallback=1, stale=2)
    phases = [
        {"served": sb.served(base, base + Counter(ranked=40, fallback=4, stale=10))},
        {"served": sb.served(base, base + Counter(ranked=60, fallback=6, stale=50))},
        {"p99_ms": 1.0},  # a phase the server did not count (the floor, /echo)
    ]
    total = sb.served_total(phases)
    assert (total["ranked"], total["fallback"], total["stale"]) == (100, 10, 60)
    assert total["fallback_share"] == 10 / 100
    assert total["stale_share"] == 60 / 100
    assert sb.served_total([{"p99_ms": 1.0}]) is None


def _answer(fallback=False, stale_user=False, stale_items=()):
    return {"fallback": fallback, "stale_user": stale_user, "stale_item_ids": list(stale_items)}


def test_each_answer_has_one_serving_path_and_the_mix_counts_them():
    answers = (
        [_answer()] * 5
        + [_answer(stale_user=True)] * 2
        + [_answer(stale_items=["7"])] * 1
        + [_answer(fallback=True, stale_items=["7"])] * 2  # popularity: not "stale"
    )
    mix = sb.path_mix(answers)
    assert mix["counts"] == {"features": 5, "stale": 3, "fallback": 2}
    assert mix["shares"] == {p: n / len(answers) for p, n in mix["counts"].items()}
    assert sum(mix["counts"].values()) == len(answers)
    assert sb.path_mix([])["shares"] == {p: None for p in sb.SERVING_PATHS}


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


def test_every_phase_measures_the_server_tree_and_only_rank_on_a_counted_server_is_counted(
    monkeypatch,
):
    specs = []

    def run_load(port, route, bodies, plan, **spec):
        specs.append(spec)
        r = step(spec.get("rate"), 2.0)
        del r["served"], r["cpu_ms_per_request"]
        return r | {"server_cpu_s": 0.6, "answered": 300}

    def no_metrics(port):
        raise AssertionError("the floor has no /metrics")

    monkeypatch.setattr(sb, "run_load", run_load)
    monkeypatch.setattr(sb, "outcomes", no_metrics)
    monkeypatch.setattr(sb, "RssSampler", _NoRss)
    plan = sb.Plan(concurrency=[1, 4], rates=[10, 50])
    result = sb.run_path("floor", 1, "/rank", plan.rates, [os.getpid()], plan, [], counted=False)
    tree = sb.process_tree([os.getpid()])
    phases = result["concurrency"] + result["steps"]
    assert len(phases) == 4 and len(specs) == 5  # and the warm-up
    assert "cpu_pids" not in specs[0]  # the warm-up is not measured
    assert all(s["cpu_pids"] == tree for s in specs[1:])  # the roots and their descendants
    assert all(r["server_pids"] == len(tree) for r in phases)
    assert all(r["cpu_ms_per_request"] == pytest.approx(0.6 * 1000 / 300) for r in phases)
    assert all("served" not in r for r in phases)
    assert result["served"] is None


def test_cpu_per_request_is_over_the_answered_requests():
    assert sb.cpu_per_request({"server_cpu_s": 0.9, "answered": 450}) == pytest.approx(0.9e3 / 450)
    assert sb.cpu_per_request({"server_cpu_s": 0.9, "answered": 0}) is None
    assert sb.cpu_per_request({"answered": 10}) is None  # nothing sampled
    tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
    assert sb.cpu_resolution({"server_pids": 4, "answered": 80}) == round(2 * 4 * tick_ms / 80, 3)
    fewer = sb.cpu_resolution({"server_pids": 4, "answered": 800})
    assert fewer < sb.cpu_resolution({"server_pids": 4, "answered": 80})


BURNER = """
import subprocess, sys, time

def burn(seconds):
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass

child = None
if sys.argv[1] == "parent":
    code = sys.argv[2]
    child = subprocess.Popen(
        [sys.executable, "-c", code, "child", ""], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )
    child.stdout.readline()
print("ready", flush=True)
sys.stdin.readline()
if child:
    child.stdin.write("go\\n")
    child.stdin.flush()
start = time.process_time()
burn(float(sys.argv[3]) if len(sys.argv) > 3 else 0.3)
mine = time.process_time() - start
theirs = float(child.stdout.readline().split()[0]) if child else 0.0
print(mine + theirs, mine, flush=True)
sys.stdin.read()  # alive until the test is done: a reaped child's time would leave the tree
"""


def test_cpu_is_summed_over_the_whole_process_tree_and_only_over_the_phase():
    """A process and its child each burn CPU after the first sample: the tree's CPU between
    the samples is what both report they burnt, within the kernel's tick resolution; the
    root alone holds only its own share."""
    cmd = [sys.executable, "-c", BURNER, "parent", BURNER, "0.4"]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        pids = sb.process_tree([proc.pid])
        assert len(pids) == 2  # the root and its child
        before = cpu_times(pids)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        total, own = (float(x) for x in proc.stdout.readline().split())
        after = cpu_times(pids)
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    tolerance = 2 * len(pids) / os.sysconf("SC_CLK_TCK") + 0.02  # truncated ticks, the pipes
    assert total > own > 0.3
    assert cpu_used(before, after) == pytest.approx(total, abs=tolerance)
    root = {proc.pid: before[proc.pid]}
    assert cpu_used(root, {proc.pid: after[proc.pid]}) == pytest.approx(own, abs=tolerance)


def test_a_process_gone_between_the_samples_is_left_out():
    before = cpu_times([os.getpid()]) | {999_999_999: 5.0}  # no such pid: not sampled after
    assert 999_999_999 not in cpu_times([999_999_999])
    after = cpu_times([os.getpid()])
    assert 0 <= cpu_used(before, after) == after[os.getpid()] - before[os.getpid()]


def test_bodies_are_drawn_from_every_known_user_and_item(tmp_path):
    """No feature table at all: every id in the maps can be drawn, with or without rows."""
    settings = Settings(data_dir=tmp_path)
    users = [f"u{i}" for i in range(30)]
    items = [f"i{i}" for i in range(60)]
    update_mapping(catalog.USER_IDS.path(settings), pd.Series(users))
    update_mapping(catalog.ITEM_IDS.path(settings), pd.Series(items))
    plan = sb.Plan(n_bodies=400, candidates=10)
    bodies, sample = sb.sample_bodies(settings, plan)
    assert sample == {"users_pool": len(users), "items_pool": len(items), "bodies": 400}
    assert len(bodies) == plan.n_bodies
    assert {b["user_id"] for b in bodies} == set(users)  # all of them, drawn at random
    assert set().union(*(b["item_ids"] for b in bodies)) == set(items)
    assert all(len(set(b["item_ids"])) == plan.candidates for b in bodies)
    assert sb.sample_bodies(settings, plan)[0] == bodies  # the seed fixes them
    again = sb.sample_bodies(settings, sb.Plan(n_bodies=400, candidates=10, seed=8))[0]
    assert again != bodies


def test_too_few_known_items_for_the_candidates_stops_the_bench(tmp_path):
    settings = Settings(data_dir=tmp_path)
    update_mapping(catalog.USER_IDS.path(settings), pd.Series(["u1"]))
    update_mapping(catalog.ITEM_IDS.path(settings), pd.Series(["i1", "i2"]))
    with pytest.raises(SystemExit):
        sb.sample_bodies(settings, sb.Plan(candidates=3))


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


def test_users_without_a_row_fall_back_on_both_stores_and_do_not_fail_the_redis_target():
    """The bodies are drawn from all known users: the same ones fall back on SQLite and on
    Redis. Only fallbacks beyond SQLite's, or unanswered reads, mean Redis did not serve."""
    fast = path([step(100, 4.0, fallback=12)])
    same = path([step(100, 5.0, fallback=12)])
    more = path([step(100, 5.0, fallback=13)])
    assert sb.redis_within_goal(sb.redis_vs_sqlite({"fast": fast, "redis": same}, 100)) is True
    assert sb.redis_within_goal(sb.redis_vs_sqlite({"fast": fast, "redis": more}, 100)) is False
    unavailable = path([step(100, 5.0, fallback=12)])
    unavailable["steps"][0]["served"]["store_unavailable"] = 1
    cmp = sb.redis_vs_sqlite({"fast": fast, "redis": unavailable}, 100)
    assert sb.redis_within_goal(cmp) is False


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


# --- the floor ------------------------------------------------------------------------------


def measured(steps: list[dict], concurrency: dict[int, tuple[float, float]]) -> dict:
    fixed = [step(None, p99, c=c, cpu=cpu) for c, (p99, cpu) in concurrency.items()]
    return {
        "concurrency": fixed,
        "steps": steps,
        "max_rate_p99_le_10ms": sb.max_passing_rate(steps),
    }


def test_every_path_is_compared_with_the_floor_at_the_loads_both_ran():
    base = measured(
        [step(10, 2.0, cpu=0.4), step(50, 2.5, cpu=0.25), step(100, 12.0, cpu=0.2)],
        {1: (1.0, 0.3), 4: (2.0, 0.2)},
    )
    fast = measured([step(10, 5.0, cpu=1.6), step(50, 6.0, cpu=1.5)], {1: (3.0, 1.2)})
    cmp = sb.vs_floor({"floor": base, "fast": fast, "echo": fast})
    assert set(cmp) == {"fast", "echo"}  # not the floor against itself
    at_rate = cmp["fast"]["at_rate"]
    assert [r["rate"] for r in at_rate] == [10, 50]  # 100: the floor only
    for r, mine, theirs in zip(at_rate, fast["steps"], base["steps"], strict=False):
        assert r["p99_ratio"] == round(mine["p99_ms"] / theirs["p99_ms"], 2)
        assert r["cpu_ratio"] == round(mine["cpu_ms_per_request"] / theirs["cpu_ms_per_request"], 2)
        assert r["floor_p99_ms"] == theirs["p99_ms"]
    assert list(cmp["fast"]["at_concurrency"]) == ["1"]
    assert cmp["fast"]["at_concurrency"]["1"]["p99_ratio"] == round(3.0 / 1.0, 2)
    assert cmp["fast"]["at_concurrency"]["1"]["cpu_ratio"] == round(1.2 / 0.3, 2)
    assert sb.vs_floor({"fast": fast}) == {}


def test_a_ratio_is_none_without_both_numbers():
    base = measured([step(10, float("nan"), cpu=None)], {1: (0.0, 0.0)})
    fast = measured([step(10, 5.0, cpu=1.0)], {1: (3.0, 1.0)})
    cmp = sb.vs_floor({"floor": base, "fast": fast})
    assert cmp["fast"]["at_rate"][0]["p99_ratio"] is None  # the floor answered nothing
    assert cmp["fast"]["at_rate"][0]["cpu_ratio"] is None
    assert cmp["fast"]["at_concurrency"]["1"]["cpu_ratio"] is None  # 0 ms: no ratio


def _rates(passing: list[int], failing: tuple[int, ...] | list[int] = ()) -> list[dict]:
    return [step(r, 2.0) for r in passing] + [step(r, 20.0) for r in failing]


@pytest.mark.parametrize(
    ("fast", "base", "met"),
    [
        (_rates([100, 200, 300], [400]), _rates([100, 200, 300, 400, 500], [600]), True),
        (_rates([100], [200]), _rates([100, 200, 300, 400, 500], [600]), False),
        # the floor passed every step: it could pass more, so 300/500 decides nothing
        (_rates([100, 200, 300], [400]), _rates([100, 200, 300, 400, 500]), None),
        # ... but 100/500 is under half of any higher floor
        (_rates([100], [200]), _rates([100, 200, 300, 400, 500]), False),
        # fast passed every step: 100/400 could still grow past half
        (_rates([100]), _rates([100, 200, 300, 400], [500]), None),
        (_rates([], [100]), _rates([100, 200], [300]), False),  # fast passed none
        (_rates([100], [200]), _rates([], [100]), None),  # the floor passed none
    ],
)
def test_the_max_rate_goal_is_decided_only_where_the_bounds_decide_it(fast, base, met):
    fast_path, base_path = measured(fast, {}), measured(base, {})
    cmp = sb.vs_floor({"floor": base_path, "fast": fast_path})
    at = cmp["fast"]["max_rate"]
    assert at["met"] is met
    assert at["rate"] == fast_path["max_rate_p99_le_10ms"]
    assert at["floor_rate"] == base_path["max_rate_p99_le_10ms"]
    if at["floor_rate"]:
        assert at["ratio"] == round((at["rate"] or 0) / at["floor_rate"], 2)
    target = sb.targets({"fast": fast_path}, {"at_rate": None}, None, None, cmp)
    assert target["fast_max_rate_ge_0_5x_floor"] is met


@pytest.mark.parametrize(
    ("c1_cpu", "at_300_cpu", "steps", "met"),
    [
        (1.9, 2.0, [100, 300], True),
        (2.1, 1.5, [100, 300], False),  # one busy connection over the goal
        (1.5, 2.1, [100, 300], False),  # 300 RPS over the goal
        (1.5, None, [100, 300], False),  # 300 RPS answered nothing: no CPU per request
        (1.5, 1.5, [100, 200], None),  # 300 RPS never ran: not measured
    ],
)
def test_the_cpu_goal_holds_at_one_busy_connection_and_at_300_rps(c1_cpu, at_300_cpu, steps, met):
    fast = measured(
        [step(r, 5.0, cpu=at_300_cpu if r == 300 else 9.0) for r in steps], {1: (2.0, c1_cpu)}
    )
    target = sb.targets({"fast": fast}, {"at_rate": None}, None)
    assert target["fast_cpu_le_2ms_per_request_at_c1_and_300rps"] is met


def test_no_floor_is_not_measured():
    paths = {"fast": path([step(100, 4.0)])}
    assert (
        sb.targets(paths, {"at_rate": None}, None, None, {})["fast_max_rate_ge_0_5x_floor"] is None
    )


@pytest.mark.parametrize(
    ("body", "ok"),
    [
        ({"user_id": "1", "item_ids": ["a", "b"]}, True),
        ({"user_id": "1", "item_ids": ["a"], "k": 1}, True),
        ({"user_id": "1", "item_ids": ["a"], "k": None}, True),
        ({"user_id": "", "item_ids": ["a"]}, False),
        ({"user_id": 1, "item_ids": ["a"]}, False),
        ({"user_id": "1", "item_ids": []}, False),
        ({"user_id": "1", "item_ids": ["a"] * (floor.MAX_ITEMS + 1)}, False),
        ({"user_id": "1", "item_ids": ["a", 2]}, False),
        ({"user_id": "1", "item_ids": "a"}, False),
        ({"user_id": "1", "item_ids": ["a"], "k": 0}, False),
        ({"user_id": "1", "item_ids": ["a"], "k": True}, False),
        ({"user_id": "1", "item_ids": ["a"], "extra": 1}, False),
        ({"item_ids": ["a"]}, False),
        (["1", ["a"]], False),
    ],
)
def test_the_floor_checks_the_rank_request_shape(body, ok):
    assert (floor.problem(body) is None) is ok


def test_the_floor_server_answers_a_valid_body_and_refuses_a_malformed_one():
    port = free_port()
    with floor.running(port, workers=2) as proc:
        tree = sb.process_tree([proc.pid])
        base = f"http://127.0.0.1:{port}/rank"
        body = {"user_id": "42", "item_ids": [str(i) for i in range(100)], "k": 10}
        good = httpx.post(base, json=body, timeout=10)
        not_json = httpx.post(base, content=b'{"user_id": "42", ', timeout=10)
        wrong = httpx.post(base, json={"user_id": "42", "item_ids": "1"}, timeout=10)
        get = httpx.get(base, timeout=10)
    assert good.status_code == 200
    assert good.json() == {"user_id": "42", "items": len(body["item_ids"])}
    assert not_json.status_code == 400
    assert wrong.status_code == 422 and "item_ids" in wrong.json()["error"]
    assert get.status_code == 405
    assert len(tree) >= 3  # uvicorn's supervisor and its 2 workers
    assert proc.returncode is not None  # stopped with its workers
    assert _left_alive(tree) == []


def _left_alive(pids: list[int], grace_s: float = 5.0) -> list[str]:
    """The command lines of ``pids`` still running after ``grace_s``. multiprocessing's
    resource tracker ignores SIGTERM and ends once the last process holding its pipe has
    gone, a moment after uvicorn's supervisor."""
    deadline = time.monotonic() + grace_s
    while (alive := [pid for pid in pids if _alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ") for pid in alive]


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
