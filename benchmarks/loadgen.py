"""A cheap HTTP/1.1 load generator for loopback benchmarks: JSON spec on stdin, JSON on stdout.

Raw ``asyncio.open_connection`` with keep-alive, pre-encoded requests, and a parser that
reads only the status line and ``Content-Length``, so it costs little CPU beside the
server on a 2-core machine. Two modes:

- ``closed``: ``concurrency`` connections, each sends its next request when the last
  answer arrived; latency from send to answer.
- ``open``: requests go out on a fixed schedule (``rate`` per second) whatever the
  server does. A request waits for a free connection (the pool grows to ``max_conns``),
  and latency counts from its *scheduled* time (or from the actual send, if a timer fired
  early), so a slow server cannot hide its queue (no coordinated omission).

Given the server's pids (``cpu_pids``), it also reads their CPU time (user + system)
right before the first request and right after the last answer, so the server's CPU per
request covers the phase and nothing around it: not this process's start-up, and not the
bench's own requests to ``/metrics`` before and after.

Usage: ``python -m benchmarks.loadgen < spec.json`` (see ``Spec`` for the fields).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psutil

HOST = "127.0.0.1"  # loopback only, by construction
VERSION_RE = re.compile(rb'"model_version"\s*:\s*"([^"]*)"')
CONN_ERROR, TIMEOUT, UNFINISHED = 0, -1, -2  # status codes for requests with no HTTP answer
STATUS_NAMES = {CONN_ERROR: "connection", TIMEOUT: "timeout", UNFINISHED: "unfinished"}


@dataclass
class Spec:
    """One load phase against ``http://127.0.0.1:<port><path>``."""

    port: int
    path: str
    bodies: list[dict]  # request bodies, sent round-robin
    mode: str  # "closed" or "open"
    duration_s: float
    concurrency: int = 1  # closed loop
    rate: float = 0.0  # open loop, requests per second
    timeout_s: float = 5.0  # per request, from its scheduled (open) or send (closed) time
    max_conns: int = 64  # open loop pool bound
    warm_conns: int = 4  # open loop: connections opened before the clock starts
    start_at: float | None = None  # time.monotonic() to start at (shared clock on Linux)
    track_version: bool = False  # return every request with the model_version it got
    records: bool = False  # return raw per-request records
    cpu_pids: list[int] = field(default_factory=list)  # the server's processes, for server_cpu_s


@dataclass
class Log:
    """Per-request timestamps (time.monotonic) and outcomes, preallocated."""

    sched: np.ndarray
    sent: np.ndarray
    done: np.ndarray
    status: np.ndarray
    versions: list[bytes | None] = field(default_factory=list)

    @classmethod
    def sized(cls, n: int, track: bool) -> Log:
        status = np.full(n, UNFINISHED, dtype=np.int32)
        times = [np.full(n, np.nan) for _ in range(3)]
        return cls(*times, status=status, versions=[None] * n if track else [])


class Conn:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.usable = True

    @classmethod
    async def open(cls, port: int) -> Conn:
        reader, writer = await asyncio.open_connection(HOST, port)
        return cls(reader, writer)

    async def request(self, payload: bytes) -> tuple[int, bytes]:
        """Send one pre-encoded request; return (status, body)."""
        self.usable = False  # until the whole answer is read
        self.writer.write(payload)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        at = lower.find(b"\ncontent-length:")
        if at >= 0:
            end = lower.find(b"\r\n", at + 1)
            body = await self.reader.readexactly(int(lower[at + 16 : end]))
        elif b"transfer-encoding: chunked" in lower:
            body = await self._chunked()
        else:
            body = b""
        self.usable = b"\nconnection: close" not in lower
        return status, body

    async def _chunked(self) -> bytes:
        parts = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            parts.append(await self.reader.readexactly(size + 2))
            if size == 0:
                return b"".join(parts)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class Pool:
    """Idle connections, most recently used first; ``None`` marks a slot to (re)open."""

    def __init__(self, port: int, max_conns: int):
        self.port = port
        self.idle: asyncio.LifoQueue[Conn | None] = asyncio.LifoQueue()
        self.opened = 0
        self.max_conns = max_conns

    async def warm(self, n: int) -> None:
        for _ in range(min(n, self.max_conns)):
            self.opened += 1
            self.idle.put_nowait(await Conn.open(self.port))

    async def acquire(self) -> Conn:
        if self.idle.empty() and self.opened < self.max_conns:
            self.opened += 1
            return await self._open()
        conn = await self.idle.get()
        if conn is not None and (conn.reader.at_eof() or conn.writer.is_closing()):
            # The server closed it while idle (keep-alive timeout): reopen, as HTTP
            # clients do, instead of counting the server's housekeeping as a failure.
            conn.close()
            conn = None
        return conn if conn is not None else await self._open()

    async def _open(self) -> Conn:
        try:
            return await Conn.open(self.port)
        except BaseException:
            self.idle.put_nowait(None)  # give the slot back
            raise

    def release(self, conn: Conn) -> None:
        if conn.usable:
            self.idle.put_nowait(conn)
        else:
            conn.close()
            self.idle.put_nowait(None)

    def close(self) -> None:
        while not self.idle.empty():
            conn = self.idle.get_nowait()
            if conn is not None:
                conn.close()


# --- the server's CPU ---------------------------------------------------------------------------


def cpu_times(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds of each live process in ``pids``.

    Each process's own time only, without its reaped children's (``children_user``):
    the caller passes the whole process tree, and a child's time would otherwise be
    counted twice once it exits and its parent collects it."""
    out = {}
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            out[pid] = times.user + times.system
    return out


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds the processes sampled both times spent in between. A process that ended
    in between is left out: its time is gone with it (a server's workers do not end while
    it serves)."""
    return sum(after[pid] - before[pid] for pid in after.keys() & before.keys())


def _server_cpu(spec: Spec, before: dict[int, float]) -> dict[str, float]:
    """``server_cpu_s`` since ``before``, when the spec names the server's processes."""
    if not spec.cpu_pids:
        return {}
    return {"server_cpu_s": round(cpu_used(before, cpu_times(spec.cpu_pids)), 3)}


def encode(port: int, path: str, body: dict) -> bytes:
    data = json.dumps(body, separators=(",", ":")).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


def _version(body: bytes) -> bytes | None:
    match = VERSION_RE.search(body)
    return match.group(1) if match else None


def _record(log: Log, i: int, status: int, body: bytes) -> None:
    log.done[i] = time.monotonic()
    log.status[i] = status
    if log.versions:
        log.versions[i] = _version(body)


async def _wait_until(t: float) -> None:
    delay = t - time.monotonic()
    await asyncio.sleep(delay if delay > 0 else 0)


async def _open_one(pool: Pool, payload: bytes, log: Log, i: int, timeout_s: float) -> None:
    deadline = asyncio.get_running_loop().time() + (log.sched[i] + timeout_s - time.monotonic())
    conn = None
    try:
        async with asyncio.timeout_at(deadline):
            conn = await pool.acquire()
            log.sent[i] = time.monotonic()
            status, body = await conn.request(payload)
        _record(log, i, status, body)
    except TimeoutError:
        log.done[i], log.status[i] = time.monotonic(), TIMEOUT
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
        log.done[i], log.status[i] = time.monotonic(), CONN_ERROR
    finally:
        if conn is not None:
            pool.release(conn)


async def run_open(spec: Spec, payloads: list[bytes]) -> tuple[Log, dict]:
    """Send ``rate * duration_s`` requests on a fixed schedule."""
    n = max(1, round(spec.rate * spec.duration_s))
    log = Log.sized(n, spec.track_version)
    pool = Pool(spec.port, spec.max_conns)
    await pool.warm(spec.warm_conns)
    start = spec.start_at or time.monotonic() + 0.05
    await _wait_until(start - 0.01)
    cpu = cpu_times(spec.cpu_pids)
    tasks = []
    for i in range(n):
        log.sched[i] = start + i / spec.rate
        await _wait_until(log.sched[i])
        payload = payloads[i % len(payloads)]
        tasks.append(asyncio.create_task(_open_one(pool, payload, log, i, spec.timeout_s)))
    await asyncio.wait(tasks, timeout=spec.timeout_s + 1)
    cpu_s = _server_cpu(spec, cpu)
    pool.close()
    return log, {"max_conns_used": pool.opened} | cpu_s


async def _closed_worker(spec: Spec, payloads: list[bytes], rows: list[tuple], end: float) -> None:
    conn: Conn | None = None
    j = 0
    while (sent := time.monotonic()) < end:
        status, body = CONN_ERROR, b""
        try:
            async with asyncio.timeout(spec.timeout_s):
                conn = conn or await Conn.open(spec.port)
                status, body = await conn.request(payloads[j % len(payloads)])
        except TimeoutError:
            status = TIMEOUT
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            status = CONN_ERROR
        rows.append(
            (sent, time.monotonic(), status, _version(body) if spec.track_version else None)
        )
        if conn is not None and (status <= 0 or not conn.usable):
            conn.close()
            conn = None
        if status == CONN_ERROR:
            await asyncio.sleep(0.05)  # do not spin on a refused connection
        j += 1
    if conn is not None:
        conn.close()


async def run_closed(spec: Spec, payloads: list[bytes]) -> tuple[Log, dict]:
    """``concurrency`` connections, each one request at a time, for ``duration_s``."""
    if spec.start_at:
        await _wait_until(spec.start_at)
    cpu = cpu_times(spec.cpu_pids)
    end = time.monotonic() + spec.duration_s
    rows: list[tuple] = []
    await asyncio.gather(
        *(
            _closed_worker(spec, payloads[w :: spec.concurrency] or payloads, rows, end)
            for w in range(spec.concurrency)
        )
    )
    cpu_s = _server_cpu(spec, cpu)
    rows.sort()
    sent = np.array([r[0] for r in rows])
    log = Log(
        sched=sent,
        sent=sent.copy(),
        done=np.array([r[1] for r in rows]),
        status=np.array([r[2] for r in rows], dtype=np.int32),
        versions=[r[3] for r in rows] if spec.track_version else [],
    )
    return log, {"max_conns_used": spec.concurrency} | cpu_s


def summarize(log: Log, spec: Spec) -> dict[str, Any]:
    """Latency percentiles (ms) of the successful requests, throughput, errors by kind."""
    ok = log.status == 200
    # From the scheduled time; a timer that fired early (uvloop's are ms-grained) counts
    # from the actual send instead, so latency is never under-counted.
    start = np.fmin(log.sched, log.sent)
    lat_ms = (log.done[ok] - start[ok]) * 1000
    codes, counts = np.unique(log.status[~ok], return_counts=True)
    errors = {
        STATUS_NAMES.get(int(c), f"http_{int(c)}"): int(n)
        for c, n in zip(codes, counts, strict=True)
    }
    finished = log.done[~np.isnan(log.done)]
    span = (finished.max() - np.nanmin(log.sched)) if len(finished) else float("nan")
    lag_ms = (log.sent - log.sched)[~np.isnan(log.sent)] * 1000
    pct = np.percentile(lat_ms, [50, 95, 99]) if len(lat_ms) else [float("nan")] * 3
    return {
        "mode": spec.mode,
        "concurrency": spec.concurrency if spec.mode == "closed" else None,
        "rate": spec.rate if spec.mode == "open" else None,
        "duration_s": spec.duration_s,
        "requests": int(len(log.status)),
        "answered": int((log.status > 0).sum()),  # any HTTP status: the server did the work
        "ok": int(ok.sum()),
        "errors": int((~ok).sum()),
        "error_kinds": errors,
        "p50_ms": round(float(pct[0]), 3),
        "p95_ms": round(float(pct[1]), 3),
        "p99_ms": round(float(pct[2]), 3),
        "max_ms": round(float(lat_ms.max()), 3) if len(lat_ms) else float("nan"),
        "mean_ms": round(float(lat_ms.mean()), 3) if len(lat_ms) else float("nan"),
        "rps": round(float(ok.sum() / span), 1) if span and span > 0 else 0.0,
        "send_lag_p99_ms": round(float(np.percentile(lag_ms, 99)), 3) if len(lag_ms) else None,
    }


def raw_records(log: Log) -> list[list]:
    """[sched, sent, done, status, model_version] per request (times: time.monotonic)."""
    versions = log.versions or [None] * len(log.status)
    return [
        [float(a), float(b), float(c), int(s), v.decode() if v else None]
        for a, b, c, s, v in zip(log.sched, log.sent, log.done, log.status, versions, strict=True)
    ]


async def run(spec: Spec) -> dict[str, Any]:
    """Run one phase and return its summary (plus raw records if asked)."""
    payloads = [encode(spec.port, spec.path, b) for b in spec.bodies]
    runner = run_open if spec.mode == "open" else run_closed
    log, extra = await runner(spec, payloads)
    out = summarize(log, spec) | extra
    if spec.records or spec.track_version:
        out["records"] = raw_records(log)
    return out


def main() -> None:
    spec = Spec(**json.load(sys.stdin))
    if spec.mode not in ("open", "closed"):
        raise SystemExit(f"unknown mode {spec.mode!r}")
    try:
        import uvloop  # cheaper per request than the default loop
    except ImportError:
        result = asyncio.run(run(spec))
    else:
        result = uvloop.run(run(spec))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
