"""``make bench-serve``: load the real BentoML server over loopback and write ``results/serve.json``.

Per path (``fast`` = /rank on the fast feature path over SQLite, ``echo`` = /echo on the
same server, ``redis`` = the fast path on ``infra/cluster``'s Feast store: a private
redis-server and a Postgres registry, loaded with the same rows, ``feast`` = /rank with
``CR_SERVING_PATH=feast``): a fixed-concurrency phase, then open-loop steps of rising rate
until the first step with p99 > 10 ms or an error (fast and redis step at least to 100 RPS,
where they are compared). Then a hot swap: promote another model under 100 RPS and measure
failures and switch time. The load comes from ``benchmarks.loadgen`` in its own process;
see ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
from rich.console import Console
from rich.table import Table

from pipelines import catalog, contracts
from pipelines.config import PROJECT_ROOT, Settings, get_settings

RESULTS = PROJECT_ROOT / "benchmarks" / "results" / "serve.json"
CLUSTER = PROJECT_ROOT / "infra" / "cluster"  # the environment whose Feast store is on Redis
P99_TARGET_MS = 10.0
REDIS_RATIO_GOAL = 1.5  # redis p99 / SQLite p99 at Plan.compare_rate
console = Console(width=None if sys.stdout.isatty() else 120)


@dataclass
class Plan:
    """What to run; ``--quick`` shortens every phase."""

    phase_s: float = 8.0
    warmup_s: float = 3.0
    concurrency: list[int] = field(default_factory=lambda: [1, 4, 16])
    rates: list[int] = field(default_factory=lambda: [10, 50, 100, 200, 300, 400, 500, 600])
    feast_rates: list[int] = field(default_factory=lambda: [10, 20, 50])
    compare_rate: int = 100  # redis vs SQLite p99 is judged here: both step at least this far
    swap_rate: float = 100.0
    swap_s: float = 15.0
    swap_at_s: float = 5.0
    timeout_s: float = 5.0
    n_bodies: int = 256
    candidates: int = 100
    seed: int = 7

    @classmethod
    def quick(cls) -> Plan:
        return cls(phase_s=2.0, warmup_s=1.0, swap_s=6.0, swap_at_s=2.0)


# --- request bodies from the data ------------------------------------------------------------


def _fresh_ids(settings: Settings, kind: str, ids: catalog.Entry) -> list[str]:
    """External ids (from the ``ids`` map) whose latest offline feature row of ``kind``
    ("user" or "item") is within the TTL of the data's present."""
    key = f"{kind}_id"
    table = catalog.FEATURE_TABLE.path(settings, kind=kind)
    frame = pd.read_parquet(table, columns=[key, "event_timestamp"])
    latest = frame.groupby(key)["event_timestamp"].max()
    marks = catalog.WATERMARKS.load_or_none(settings)
    ends = marks.root.values() if marks is not None else ()
    now = max((pd.Timestamp(v) for v in ends), default=latest.max())
    fresh = latest[latest >= now - contracts.FEATURE_TTL].index
    internal = set(fresh if len(fresh) >= 20 else latest.index)  # few fresh: take any with rows

    from pipelines.ids import read_mapping

    mapping = read_mapping(ids.path(settings))
    return sorted(mapping.loc[mapping["internal_id"].isin(internal), "external_id"].astype(str))


def sample_bodies(settings: Settings, plan: Plan) -> tuple[list[dict], dict]:
    """``plan.n_bodies`` requests: a user with online features and ``plan.candidates`` items."""
    import random

    users = _fresh_ids(settings, "user", catalog.USER_IDS)
    items = _fresh_ids(settings, "item", catalog.ITEM_IDS)
    if not users or len(items) < plan.candidates:
        raise SystemExit("no users or too few items in the data: run `make run` first")
    rng = random.Random(plan.seed)
    bodies = [
        {"user_id": rng.choice(users), "item_ids": rng.sample(items, plan.candidates)}
        for _ in range(plan.n_bodies)
    ]
    return bodies, {"users_pool": len(users), "items_pool": len(items), "bodies": len(bodies)}


# --- the load generator process -------------------------------------------------------------


def run_load(port: int, route: str, bodies: list[dict], plan: Plan, **spec: Any) -> dict:
    """One phase in a fresh ``benchmarks.loadgen`` process; returns its JSON summary."""
    spec = {"port": port, "path": route, "bodies": bodies, "timeout_s": plan.timeout_s} | spec
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.loadgen"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=spec["duration_s"] + plan.timeout_s + 60,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"loadgen failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


# --- server memory ----------------------------------------------------------------------------


def _ppids() -> dict[int, int]:
    out = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(entry.path, "stat").read_text()
                out[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return out


def process_tree(roots: list[int]) -> list[int]:
    """``roots`` and all their descendants (BentoML's workers get their own process group)."""
    ppids, found = _ppids(), set(roots)
    grew = True
    while grew:
        new = {pid for pid, ppid in ppids.items() if ppid in found} - found
        found |= new
        grew = bool(new)
    return sorted(found)


def rss_mb(pids: list[int]) -> float:
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
    return total / 2**20


class RssSampler:
    """Samples the server tree's summed RSS every ``interval_s`` in a thread."""

    def __init__(self, roots: list[int], interval_s: float = 0.5):
        self.roots, self.interval_s = roots, interval_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(rss_mb(process_tree(self.roots)))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def result(self) -> dict[str, Any]:
        s = self.samples or [0.0]
        return {"peak": round(max(s), 1), "mean": round(sum(s) / len(s), 1), "samples": len(s)}


# --- the server -------------------------------------------------------------------------------


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """Set ``values`` in os.environ (serve() copies it into the server), then restore it."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in before.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def _children() -> set[int]:
    mine = os.getpid()
    return {pid for pid, ppid in _ppids().items() if ppid == mine}


@contextlib.contextmanager
def server(
    settings: Settings, serving_path: str, extra_env: dict[str, str], label: str | None = None
) -> Iterator[tuple[int, list[int]]]:
    """The real ``bentoml serve`` (as ``make serve``) with ``CR_SERVING_PATH``; yields (port, pids)."""
    from pipelines.infra_validation import serve

    before = _children()  # e.g. the bench's redis-server: not part of this server's memory
    with _environ(extra_env | {"CR_SERVING_PATH": serving_path}):
        started = time.monotonic()
        with serve(settings, timeout_s=240) as base:
            took = time.monotonic() - started
            console.print(f"[dim]{label or serving_path} server up in {took:.1f}s[/]")
            yield int(base.rsplit(":", 1)[1]), sorted(_children() - before)


def model_version(port: int) -> str | None:
    with contextlib.suppress(httpx.HTTPError, ValueError):
        resp = httpx.post(f"http://127.0.0.1:{port}/model_version", timeout=5)
        return resp.json().get("model_version")
    return None


# --- what the server answered: its own counters ------------------------------------------------


def outcomes(port: int) -> Counter:
    """/rank requests served and those that fell back (``rank_outcomes``), from the server's
    Prometheus ``/metrics``, summed over its workers and model versions. The load generator
    reads only status lines, so a response's body is counted here."""
    return count_outcomes(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)


def count_outcomes(text: str) -> Counter:
    """``ranked``, ``fallback`` and ``store_unavailable`` in a Prometheus text exposition."""
    out: Counter = Counter()
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name.startswith("rank_request_seconds_count{") and 'phase="total"' in name:
            out["ranked"] += int(float(value))
        elif name.startswith("rank_outcomes_total{"):
            for outcome in ("fallback", "store_unavailable"):
                if f'outcome="{outcome}"' in name:
                    out[outcome] += int(float(value))
    return out


def served(before: Counter, after: Counter) -> dict[str, Any]:
    """The server-side outcomes of one phase: counts and the share that fell back."""
    ranked, fallback = after["ranked"] - before["ranked"], after["fallback"] - before["fallback"]
    return {
        "ranked": ranked,
        "fallback": fallback,
        "store_unavailable": after["store_unavailable"] - before["store_unavailable"],
        "fallback_share": round(fallback / ranked, 4) if ranked else None,
    }


def check_features(port: int, bodies: list[dict], n: int = 32) -> dict[str, Any]:
    """Rank ``n`` bodies before any load: every answer must come from the user's features
    (``fallback`` and ``online_store_unavailable`` false), or the path measures nothing."""
    answers = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        for body in bodies[:n]:
            resp = client.post("/rank", json=body)
            resp.raise_for_status()
            answers.append(resp.json())
    result = {
        "requests": len(answers),
        "fallback": sum(a["fallback"] for a in answers),
        "online_store_unavailable": sum(a["online_store_unavailable"] for a in answers),
    }
    if result["fallback"] or result["online_store_unavailable"]:
        raise RuntimeError(f"the server ranked without online features: {result}")
    return result


# --- the Redis online store ------------------------------------------------------------------


def redis_connection(port: int) -> str:
    """Feast's connection string for the private Redis: ``infra/cluster``'s options
    (database, socket timeouts) with this server's address."""
    for line in (CLUSTER / "settings.env").read_text().splitlines():
        name, _, value = line.partition("=")
        if name == "CR_REDIS_CONNECTION" and "," in value:
            return f"127.0.0.1:{port},{value.split(',', 1)[1]}"
    return f"127.0.0.1:{port}"


@contextlib.contextmanager
def redis_server() -> Iterator[tuple[int, subprocess.Popen]]:
    """A ``redis-server`` of the bench's own on a free loopback port, without persistence
    (never the machine's shared Redis); stopped afterwards."""
    import redis

    from pipelines.infra_validation import free_port

    port = free_port()
    cmd = ["redis-server", "--bind", "127.0.0.1", "--port", str(port)]
    cmd += ["--save", "", "--appendonly", "no", "--loglevel", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        client, deadline = redis.Redis(port=port), time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    out = proc.stdout.read() if proc.poll() is not None else ""
                    raise RuntimeError(
                        f"redis-server on port {port} did not start: {out}"
                    ) from None
                time.sleep(0.05)
        yield port, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def postgres_database(server: str) -> Iterator[str]:
    """A database of the bench's own on ``server`` (user@host:port) for Feast's SQL registry,
    dropped afterwards; yields its SQLAlchemy URL."""
    import psycopg

    name = f"cr_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"postgresql://{server}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{server}/{name}"
    finally:
        with psycopg.connect(f"postgresql://{server}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def fill_redis() -> None:
    """Run by :func:`redis_store` in a child process (Spark's JVM ends with it).

    ``feast apply`` to the registry at ``CR_FEAST_REGISTRY_URL``, then load the Redis at
    ``CR_REDIS_CONNECTION`` with ``load_online`` over the window the SQLite store holds:
    from the data set's first day (as the ``materialize`` task starts) to the view's
    watermark. ``materialize`` itself would read the data dir's watermarks and skip. Then
    check that both stores hold the same item table and the same row for every user.
    Prints a JSON summary as its last line."""
    import numpy as np

    from pipelines import feature_store
    from pipelines.data import dataset_facts
    from pipelines.ids import read_mapping
    from pipelines.training_set import utc_midnight
    from serving.online import FastReader

    started = time.monotonic()
    sqlite = get_settings()
    sqlite_store = feature_store.open_store(sqlite)
    if sqlite_store.config.online_store.type != "sqlite":
        raise SystemExit("the redis phase compares with the local profile's SQLite store")
    on_redis = sqlite.model_copy(update={"feature_store_yaml": CLUSTER / "feature_store.yaml"})
    feature_store.apply(on_redis)
    store = feature_store.open_store(on_redis)
    first = utc_midnight(dataset_facts(sqlite).first_date)
    marks = catalog.WATERMARKS.load(sqlite).root
    rows, windows = {}, {}
    for view in contracts.ONLINE_VIEWS:
        rows[view] = feature_store.load_online(on_redis, store, view, first, marks[view])
        windows[view] = [first.isoformat(), marks[view].isoformat()]
    loaded_s = time.monotonic() - started

    want, got = FastReader(sqlite_store, sqlite), FastReader(store, on_redis)
    n = min(len(want.items), len(got.items))  # the tables' sizes differ by ids without rows
    if not np.isnan(np.concatenate([want.items[n:], got.items[n:]])).all():
        raise AssertionError(f"item features past id {n} on only one store")
    np.testing.assert_array_equal(got.items[:n], want.items[:n], err_msg="item features")
    np.testing.assert_array_equal(got.item_ts[:n], want.item_ts[:n], err_msg="item times")
    users = read_mapping(catalog.USER_IDS.path(sqlite))["internal_id"].astype(int).tolist()
    found = 0
    for user in users:
        (a, a_ts), (b, b_ts) = want.rows.user(user), got.rows.user(user)
        np.testing.assert_array_equal(b, a, err_msg=f"user {user}")
        np.testing.assert_array_equal(b_ts, a_ts, err_msg=f"user {user}: feature times")
        found += bool(a_ts[0] > 0)
    summary = {
        "windows": windows,
        "rows": rows,
        "load_s": round(loaded_s, 1),
        "same_as_sqlite": {"items": n, "users": len(users), "users_with_row": found},
    }
    print(json.dumps(summary))


@dataclass
class RedisStore:
    """What :func:`redis_store` set up: the server environment that selects it, the
    redis-server's pid (for its memory), and the load's summary."""

    env: dict[str, str]
    pid: int
    info: dict[str, Any]


@contextlib.contextmanager
def redis_store(postgres: str) -> Iterator[RedisStore]:
    """``infra/cluster``'s Feast store on a private redis-server and a fresh Postgres
    registry, holding the SQLite store's rows; all of it removed afterwards."""
    with redis_server() as (port, proc), postgres_database(postgres) as registry:
        env = {"CR_FEAST_REGISTRY_URL": registry, "CR_REDIS_CONNECTION": redis_connection(port)}
        console.print(f"[bold]redis[/] store: loading redis-server :{port} in a child process")
        loader = "from benchmarks.serve_bench import fill_redis; fill_redis()"
        done = subprocess.run(  # the child's settings are this process's: it reads SQLite too
            [sys.executable, "-c", loader],
            env=os.environ | env,
            capture_output=True,
            text=True,
            cwd=PROJECT_ROOT,
            timeout=900,
        )
        if done.returncode != 0:
            raise RuntimeError(f"loading Redis failed ({done.returncode}):\n{done.stderr[-3000:]}")
        info = json.loads(done.stdout.strip().splitlines()[-1])
        console.print(f"[dim]redis loaded in {info['load_s']} s, rows {info['rows']}[/]")
        env["CR_FEATURE_STORE_YAML"] = str(CLUSTER / "feature_store.yaml")
        yield RedisStore(env, proc.pid, info | {"connection": env["CR_REDIS_CONNECTION"]})


# --- phases -------------------------------------------------------------------------------------


def passes(step: dict) -> bool:
    return step["errors"] == 0 and step["p99_ms"] <= P99_TARGET_MS


def _show(name: str, label: str, r: dict) -> None:
    mark = "[green]ok[/]" if passes(r) else "[red]over[/]"
    share = r.get("served", {}).get("fallback_share")
    fallback = f"  fallback {share:.1%}" if share is not None else ""
    console.print(
        f"  {name:5} {label:>9}: p50 {r['p50_ms']:8.2f}  p99 {r['p99_ms']:8.2f} ms  "
        f"{r['rps']:6.1f} RPS  errors {r['errors']}{fallback}  {mark}"
    )


def max_passing_rate(steps: list[dict]) -> int | None:
    """The highest rate that passed below the first failing step."""
    best = None
    for step in steps:
        if not step["pass"]:
            break
        best = step["rate"]
    return best


def run_path(
    name: str,
    port: int,
    route: str,
    rates: list[int],
    roots: list[int],
    plan: Plan,
    bodies: list[dict],
    min_rate: int = 0,
) -> dict:
    """Warm-up, fixed concurrency, then stepped open-loop rates until the first failing step
    (but not before ``min_rate``). /rank phases record the server's outcomes (``served``)."""
    console.print(f"[bold]{name}[/] ({route})")

    def phase(**spec: Any) -> dict:
        before = outcomes(port) if route == "/rank" else None
        r = run_load(port, route, bodies, plan, duration_s=plan.phase_s, **spec)
        if before is not None:
            r["served"] = served(before, outcomes(port))
        return r

    with RssSampler(roots) as rss:
        run_load(port, route, bodies, plan, mode="closed", concurrency=2, duration_s=plan.warmup_s)
        fixed = []
        for c in plan.concurrency:
            r = phase(mode="closed", concurrency=c)
            _show(name, f"c={c}", r)
            fixed.append(r)
        steps = []
        for rate in rates:
            r = phase(mode="open", rate=rate)
            r["pass"] = passes(r)
            _show(name, f"{rate} RPS", r)
            steps.append(r)
            if not r["pass"] and rate >= min_rate:
                break
    return {
        "route": route,
        "concurrency": fixed,
        "steps": steps,
        "max_rate_p99_le_10ms": max_passing_rate(steps),
        "rss_mb": rss.result(),
    }


def _swap_tag(settings: Settings, original: str) -> tuple[str, bool]:
    """A different stored model with the same features: a previous bench copy, another
    model, or (only one model stored) a new copy of the production booster."""
    from pipelines import registry

    features = registry.model_info(original, settings)["metadata"].get("feature_names")
    infos = [registry.model_info(t, settings) for t in registry.list_models(settings)]
    others = [
        i
        for i in infos
        if i["tag"] != original
        and i["metadata"].get("feature_names") == features
        and i["metadata"].get("gate", {}).get("passed") is True  # promotable
    ]
    bench = [i for i in others if i["metadata"].get("purpose") == "bench hot swap"]
    if bench or others:
        return (bench or others)[-1]["tag"], False
    booster = registry.load_booster(original, settings)
    meta = registry.model_info(original, settings)["metadata"]
    meta |= {"purpose": "bench hot swap", "copied_from": original}
    return registry.save_model(booster, metadata=meta, settings=settings), True


def _await_version(port: int, tag: str, timeout_s: float = 10) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if model_version(port) == tag:
            return True
        time.sleep(0.1)
    return False


def hot_swap(settings: Settings, port: int, plan: Plan, bodies: list[dict]) -> dict:
    """Promote another model under open-loop load, then restore the original production tag."""
    from pipelines import registry

    original = registry.production_tag(settings)
    assert original, "no production model"
    pointer = catalog.PRODUCTION.path(settings)
    saved_pointer = pointer.read_bytes()  # restored byte for byte: the bench leaves no history
    new, created = _swap_tag(settings, original)
    console.print(f"[bold]hot swap[/] {original} -> {new} at {plan.swap_rate:.0f} RPS")
    start_at = time.monotonic() + 2.0  # the loadgen process starts meanwhile
    spec = {
        "port": port,
        "path": "/rank",
        "bodies": bodies,
        "mode": "open",
        "rate": plan.swap_rate,
        "duration_s": plan.swap_s,
        "timeout_s": plan.timeout_s,
        "start_at": start_at,
        "track_version": True,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.loadgen"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=PROJECT_ROOT,
    )
    wait_s = plan.swap_s + plan.timeout_s + 60
    try:
        out, err, promoted_at = _promote_during(
            proc, json.dumps(spec), start_at + plan.swap_at_s, new, settings, wait_s
        )
    finally:
        catalog.atomic_write(pointer, saved_pointer)
        if proc.poll() is None:
            proc.kill()
    if proc.returncode != 0 or not out:
        raise RuntimeError(f"loadgen failed ({proc.returncode}):\n{err[-3000:]}")
    load = json.loads(out)
    result = analyse_swap(load.pop("records"), promoted_at, original, new)
    return result | {
        "created_copy": created,
        "rate": plan.swap_rate,
        "duration_s": plan.swap_s,
        "promoted_after_s": plan.swap_at_s,
        "load": load,
        "restored": _await_version(port, original),
    }


def _promote_during(
    proc: subprocess.Popen,
    spec: str,
    promote_at: float,
    tag: str,
    settings: Settings,
    wait_s: float,
) -> tuple[str, str, float]:
    """Feed the loadgen its spec, promote ``tag`` at ``promote_at``, collect its output."""
    from pipelines import registry

    box: dict[str, str] = {}

    def talk() -> None:
        box["out"], box["err"] = proc.communicate(spec)

    reader = threading.Thread(target=talk, daemon=True)
    reader.start()
    time.sleep(max(0.0, promote_at - time.monotonic()))
    promoted_at = time.monotonic()
    registry.promote(tag, settings, reason="bench-serve hot swap")
    reader.join(timeout=wait_s)
    return box.get("out", ""), box.get("err", ""), promoted_at


def analyse_swap(records: list[list], promoted_at: float, old: str, new: str) -> dict:
    """Failures, and when responses switched: records are [sched, sent, done, status, version]."""
    ok = [r for r in records if r[3] == 200]
    new_ok = [r for r in ok if r[4] == new]
    old_ok = [r for r in ok if r[4] == old]
    first_new = min(new_ok, key=lambda r: r[2]) if new_ok else None
    old_after = [r for r in old_ok if first_new and r[1] > first_new[1]]
    switch_s = first_new[2] - promoted_at if first_new else None
    last_old_sent = max((r[1] for r in old_ok), default=None)
    failures = len(records) - len(ok)
    return {
        "requests": len(records),
        "failures": failures,
        "versions": dict(Counter(r[4] for r in ok)),
        "from_tag": old,
        "to_tag": new,
        "switch_s": round(switch_s, 3) if switch_s is not None else None,
        "last_old_sent_after_promotion_s": (
            round(last_old_sent - promoted_at, 3) if last_old_sent is not None else None
        ),
        "old_after_first_new": len(old_after),
        "passed": failures == 0 and switch_s is not None and switch_s <= 5 and not old_after,
    }


# --- summary ------------------------------------------------------------------------------------


def _pair(fast: dict | None, base: dict | None) -> dict | None:
    if not fast or not base or not fast["p99_ms"]:
        return None
    return {
        "fast_p99_ms": fast["p99_ms"],
        "baseline_p99_ms": base["p99_ms"],
        "ratio": round(base["p99_ms"] / fast["p99_ms"], 1),
    }


def ratios(paths: dict[str, dict]) -> dict:
    """``baseline_p99 / fast_p99`` at the highest rate both ran and at each shared concurrency."""
    fast, base = paths["fast"], paths["feast"]
    by_rate = [{s["rate"]: s for s in p["steps"]} for p in (fast, base)]
    shared = sorted(set(by_rate[0]) & set(by_rate[1]))
    at_rate = None
    if shared and (pair := _pair(by_rate[0][shared[-1]], by_rate[1][shared[-1]])):
        at_rate = {"rate": shared[-1], **pair}
    by_c = [{s["concurrency"]: s for s in p["concurrency"]} for p in (fast, base)]
    at_c = {str(c): _pair(by_c[0][c], by_c[1][c]) for c in sorted(set(by_c[0]) & set(by_c[1]))}
    return {"at_rate": at_rate, "at_concurrency": at_c}


def _vs_sqlite(sqlite: dict, redis: dict) -> dict:
    return {
        "sqlite_p99_ms": sqlite["p99_ms"],
        "redis_p99_ms": redis["p99_ms"],
        "ratio": round(redis["p99_ms"] / sqlite["p99_ms"], 2) if sqlite["p99_ms"] else None,
        "redis_errors": redis["errors"],
        "redis_fallback": redis.get("served", {}).get("fallback"),
    }


def redis_vs_sqlite(paths: dict[str, dict], compare_rate: int) -> dict:
    """``redis_p99 / sqlite_p99`` (the fast path on each store) at every rate and every
    concurrency both ran, and at ``compare_rate`` against :data:`REDIS_RATIO_GOAL`."""
    sqlite, redis = paths["fast"], paths["redis"]
    by_rate = [{s["rate"]: s for s in p["steps"]} for p in (sqlite, redis)]
    at_rate = [
        {"rate": rate, **_vs_sqlite(by_rate[0][rate], by_rate[1][rate])}
        for rate in sorted(set(by_rate[0]) & set(by_rate[1]))
    ]
    by_c = [{s["concurrency"]: s for s in p["concurrency"]} for p in (sqlite, redis)]
    at_c = {str(c): _vs_sqlite(by_c[0][c], by_c[1][c]) for c in sorted(set(by_c[0]) & set(by_c[1]))}
    at_compare = next((r for r in at_rate if r["rate"] == compare_rate), None)
    return {
        "compare_rate": compare_rate,
        "goal_ratio": REDIS_RATIO_GOAL,
        "at_rate": at_rate,
        "at_concurrency": at_c,
        "at_compare_rate": at_compare,
    }


def redis_within_goal(cmp: dict | None) -> bool | None:
    """Redis p99 within the goal of SQLite's at the compare rate, with no failed request and
    no fallback on Redis (a popularity answer skips the model: it would flatter the tail)."""
    at = cmp and cmp["at_compare_rate"]
    if not at or at["ratio"] is None:
        return None
    clean = at["redis_errors"] == 0 and not at["redis_fallback"]
    return clean and at["ratio"] <= cmp["goal_ratio"]


def targets(
    paths: dict[str, dict], ratio: dict, swap: dict | None, redis: dict | None = None
) -> dict[str, bool | None]:
    """The issue's targets, each true/false (None: not measured)."""
    fast = paths["fast"]
    c1 = next((s for s in fast["concurrency"] if s["concurrency"] == 1), None)
    phases = fast["concurrency"] + [s for s in fast["steps"] if s["pass"]]
    best = fast["max_rate_p99_le_10ms"]
    return {
        "fast_c1_p99_le_10ms": c1["p99_ms"] <= P99_TARGET_MS if c1 else None,
        "fast_c1_p50_le_4ms": c1["p50_ms"] <= 4.0 if c1 else None,
        "fast_no_errors_below_max_rate": all(s["errors"] == 0 for s in phases),
        "fast_ge_300rps_at_p99_le_10ms": best is not None and best >= 300,
        "ratio_ge_10_at_rate": ratio["at_rate"]["ratio"] >= 10 if ratio["at_rate"] else None,
        "hot_swap_0_failures_switch_le_5s": swap["passed"] if swap else None,
        "redis_p99_within_1_5x_sqlite_at_100rps": redis_within_goal(redis),
    }


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(
        (ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")),
        platform.processor(),
    )
    mem_kb = int(
        next(
            ln.split()[1]
            for ln in Path("/proc/meminfo").read_text().splitlines()
            if ln.startswith("MemTotal")
        )
    )
    from importlib.metadata import version

    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_total_gb": round(mem_kb / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "bentoml": version("bentoml"),
        "feast": version("feast"),
    }


def print_table(report: dict) -> None:
    table = Table(title="bench-serve: 100 candidates per request, loopback HTTP, latency in ms")
    for col in (
        "path",
        "phase",
        "load",
        "requests",
        "p50",
        "p95",
        "p99",
        "RPS",
        "errors",
        "fallback",
        "p99≤10",
    ):
        table.add_column(col, justify="left" if col in ("path", "phase") else "right")
    for name, p in report["paths"].items():
        rows = [("closed", f"c={s['concurrency']}", s) for s in p["concurrency"]]
        rows += [("open", f"{s['rate']:g}/s", s) for s in p["steps"]]
        for phase, load, s in rows:
            table.add_row(
                name,
                phase,
                load,
                str(s["requests"]),
                f"{s['p50_ms']:.2f}",
                f"{s['p95_ms']:.2f}",
                f"{s['p99_ms']:.2f}",
                f"{s['rps']:.0f}",
                str(s["errors"]),
                _share(s),
                "✓" if passes(s) else "✗",
            )
        table.add_section()
    console.print(table)
    console.print(summary_table(report))


def _share(step: dict) -> str:
    share = step.get("served", {}).get("fallback_share")
    return "-" if share is None else f"{share:.1%}"


def _ratio_row(label: str, pair: dict | None) -> tuple[str, str]:
    if not pair:
        return label, "not measured"
    text = f"{pair['baseline_p99_ms']:.1f} / {pair['fast_p99_ms']:.2f} ms = {pair['ratio']}x"
    return label, text


def summary_table(report: dict) -> Table:
    """Max rates, memory, p99 ratios, hot swap, targets, duration."""
    table = Table(title="summary", show_header=False)
    table.add_column("what")
    table.add_column("value")
    for name, p in report["paths"].items():
        best = p["max_rate_p99_le_10ms"]
        table.add_row(f"{name}: max rate, p99 ≤ 10 ms", f"{best} RPS" if best else "none")
        table.add_row(
            f"{name}: server RSS peak / mean", f"{p['rss_mb']['peak']} / {p['rss_mb']['mean']} MB"
        )
    ratio = report["ratio"]
    at = ratio["at_rate"]
    table.add_row(*_ratio_row(f"baseline/fast p99 at {at['rate'] if at else '-'} RPS", at))
    for c, pair in ratio["at_concurrency"].items():
        table.add_row(*_ratio_row(f"baseline/fast p99 at c={c}", pair))
    cmp = report.get("redis_vs_sqlite")
    if cmp:
        rows = [(f"{r['rate']:g} RPS", r) for r in cmp["at_rate"]]
        rows += [(f"c={c}", r) for c, r in cmp["at_concurrency"].items()]
        for load, r in rows:
            mark = f" (goal ≤ {cmp['goal_ratio']}x)" if r.get("rate") == cmp["compare_rate"] else ""
            table.add_row(
                f"redis/SQLite p99 at {load}",
                f"{r['redis_p99_ms']:.2f} / {r['sqlite_p99_ms']:.2f} ms = {r['ratio']}x{mark}",
            )
        store = report["redis"]
        table.add_row(
            "redis: checked before load",
            f"{store['features_check']['requests']} requests, fallback "
            f"{store['features_check']['fallback']}, store unavailable "
            f"{store['features_check']['online_store_unavailable']}",
        )
        table.add_row("redis: redis-server RSS", f"{store['redis_server_rss_mb']} MB")
    swap = report.get("hot_swap")
    if swap:
        table.add_row(
            "hot swap",
            f"{swap['failures']} failed of {swap['requests']}, switch {swap['switch_s']} s, "
            f"old after new {swap['old_after_first_new']}, restored {swap['restored']}",
        )
    for name, ok in report["targets"].items():
        table.add_row(
            f"target {name}", {True: "[green]met[/]", False: "[red]missed[/]"}.get(ok, "-")
        )
    table.add_row("duration", f"{report['duration_s']:.0f} s")
    return table


# --- main ---------------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.serve_bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="2 s phases, 6 s hot swap")
    ap.add_argument("--phase-s", type=float, help="seconds per phase/step")
    ap.add_argument(
        "--rates", type=_ints, help="open-loop rates for fast, echo and redis, e.g. 50,100"
    )
    ap.add_argument("--feast-rates", type=_ints, help="open-loop rates for the Feast-SDK path")
    ap.add_argument("--concurrency", type=_ints, help="closed-loop concurrencies, e.g. 1,4,16")
    ap.add_argument("--skip-feast", action="store_true", help="no Feast-SDK server")
    ap.add_argument("--skip-redis", action="store_true", help="no Redis-backed fast server")
    ap.add_argument(
        "--postgres",
        default=os.environ.get("CR_BENCH_POSTGRES", "postgres@127.0.0.1:5432"),
        metavar="USER@HOST:PORT",
        help="Postgres for the redis phase's Feast registry (a database of its own, dropped)",
    )
    ap.add_argument("--skip-swap", action="store_true", help="no hot-swap phase")
    ap.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for every server, e.g. OMP_NUM_THREADS=1 (default: none, as make serve)",
    )
    ap.add_argument("--out", type=Path, default=RESULTS)
    return ap.parse_args(argv)


def make_plan(args: argparse.Namespace) -> Plan:
    plan = Plan.quick() if args.quick else Plan()
    for name in ("phase_s", "rates", "feast_rates", "concurrency"):
        if getattr(args, name) is not None:
            setattr(plan, name, getattr(args, name))
    return plan


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args, started = parse_args(argv), time.monotonic()
    plan, settings = make_plan(args), get_settings()
    from pipelines import registry

    tag = registry.production_tag(settings)
    if tag is None:
        raise SystemExit("no production model: run `make run` first")
    bodies, sample = sample_bodies(settings, plan)
    paths: dict[str, dict] = {}
    swap = redis = None
    env = dict(kv.split("=", 1) for kv in args.server_env)
    with contextlib.ExitStack() as stack:
        # Loaded before any server runs, so no phase shares the cores with Spark.
        store = None if args.skip_redis else stack.enter_context(redis_store(args.postgres))
        with server(settings, "fast", env) as (port, roots):
            serving = model_version(port)
            checked = check_features(port, bodies)
            paths["fast"] = run_path(
                "fast", port, "/rank", plan.rates, roots, plan, bodies, plan.compare_rate
            )
            paths["echo"] = run_path("echo", port, "/echo", plan.rates, roots, plan, bodies)
            if not args.skip_swap:
                swap = hot_swap(settings, port, plan, bodies)
        if store is not None:  # the same server code, model and bodies, on Redis
            with server(settings, "fast", env | store.env, label="redis") as (port, roots):
                store.info["features_check"] = check_features(port, bodies)
                paths["redis"] = run_path(
                    "redis", port, "/rank", plan.rates, roots, plan, bodies, plan.compare_rate
                )
                store.info["redis_server_rss_mb"] = round(rss_mb([store.pid]), 1)
            redis = store.info
    if not args.skip_feast:
        with server(settings, "feast", env) as (port, roots):
            paths["feast"] = run_path("feast", port, "/rank", plan.feast_rates, roots, plan, bodies)
    ratio = ratios(paths) if "feast" in paths else {"at_rate": None, "at_concurrency": {}}
    compared = redis_vs_sqlite(paths, plan.compare_rate) if "redis" in paths else None
    cmd = "make bench-serve" if os.environ.get("MAKELEVEL") else "python -m benchmarks.serve_bench"
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([cmd, *argv]),
        "machine": machine(),
        "model": {"production_tag": tag, "served": serving},
        "features_check": checked,
        "requests": sample | {"candidates": plan.candidates},
        "plan": asdict(plan),
        "server_env": env,
        "p99_target_ms": P99_TARGET_MS,
        "paths": paths,
        "ratio": ratio,
        "redis_vs_sqlite": compared,
        "redis": redis,
        "hot_swap": swap,
        "targets": targets(paths, ratio, swap, compared),
        "duration_s": round(time.monotonic() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    console.print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
