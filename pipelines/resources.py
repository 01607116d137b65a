"""What a stage costs the machine: peak PSS and CPU time of the driver and of Spark.

"Spark" is the JVM the driver started and everything under it: in ``local[N]`` mode the
executors run inside that JVM, and their Python workers (UDFs, XGBoost's training) are
its child processes. PSS (proportional set size) counts shared pages once across
processes, so the driver's and Spark's figures add up.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import logging
import platform
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import psutil

MB = 2**20
log = logging.getLogger(__name__)


def _spark(proc: psutil.Process) -> list[psutil.Process]:
    """The Spark JVMs under ``proc`` and their descendants (the executors' Python workers)."""
    found = []
    with suppress(psutil.Error):
        for jvm in (c for c in proc.children(recursive=True) if c.name() == "java"):
            found.append(jvm)
            with suppress(psutil.Error):
                found += jvm.children(recursive=True)
    return found


def _pss(procs: list[psutil.Process]) -> int:
    total = 0
    for p in procs:
        with suppress(psutil.Error):  # a process that just exited counts nothing
            total += p.memory_full_info().pss
    return total


def _cpu(procs: list[psutil.Process], last: dict[int, float] | None = None) -> float:
    """CPU seconds of ``procs``, and of their children that have exited (Spark's Python
    workers are short-lived). With ``last`` (pid -> seconds), each live process's figure is
    recorded there, and a process that has exited counts what it last showed, so a worker
    that ends inside the block never takes its earlier seconds out of the total."""
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            seconds = t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            seconds = (last or {}).get(p.pid, 0.0)
        if last is not None:
            last[p.pid] = seconds
        total += seconds
    return total


def _own_cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


@contextmanager
def watch(interval_s: float = 0.5) -> Iterator[dict[str, float]]:
    """Yield a dict that, when the block ends, holds the block's peak PSS (MB) and CPU
    seconds of this process (``driver_*``) and of Spark under it (``spark_*``), sampled
    every ``interval_s``. A process that starts inside the block counts from its start.

    The driver's own CPU excludes Spark's: the JVM is a child that has not exited.
    """
    me = psutil.Process()
    seen: dict[int, psutil.Process] = {p.pid: p for p in _spark(me)}
    last_cpu: dict[int, float] = {}
    cpu_before = {"driver": _own_cpu(me), "spark": _cpu(list(seen.values()), last_cpu)}
    peaks = {"driver": 0, "spark": 0}
    stop = threading.Event()

    def sample() -> None:
        while True:
            live = _spark(me)
            for p in live:
                seen.setdefault(p.pid, p)
            _cpu(list(seen.values()), last_cpu)
            peaks["driver"] = max(peaks["driver"], _pss([me]))
            peaks["spark"] = max(peaks["spark"], _pss(live))
            if stop.wait(interval_s):
                return

    thread = threading.Thread(target=sample, name="resource-watch", daemon=True)
    thread.start()
    result: dict[str, float] = {}
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        result |= {
            "driver_peak_pss_mb": round(peaks["driver"] / MB),
            "spark_peak_pss_mb": round(peaks["spark"] / MB),
            "driver_cpu_s": round(_own_cpu(me) - cpu_before["driver"], 2),
            "spark_cpu_s": round(_cpu(list(seen.values()), last_cpu) - cpu_before["spark"], 2),
        }


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library is another (macOS, musl)."""
    if platform.libc_ver()[0] != "glibc":
        return None
    trim = ctypes.CDLL(None).malloc_trim  # the C library the interpreter is linked to
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_memory() -> None:
    """Hand the heap a finished stage freed back to the operating system.

    ``airflow dags test`` (``make run``, the bench) runs every task in one process, so
    without this a stage starts on the high-water mark of the ones before it: Python
    frees objects, but glibc's malloc keeps the pages, and so does Arrow's memory pool.
    Collects reference cycles first (pandas and Great Expectations leave some). Never
    raises: a stage's own outcome is what counts.
    """
    try:
        gc.collect()
        if "pyarrow" in sys.modules:
            sys.modules["pyarrow"].default_memory_pool().release_unused()
        trim = _malloc_trim()
        if trim is not None:
            trim(0)
    except Exception:  # noqa: BLE001 - memory hygiene must not fail or mask a stage
        log.warning("could not release the freed heap", exc_info=True)
