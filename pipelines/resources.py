"""What a stage costs the machine: peak PSS and CPU time of the driver and its Spark JVM.

PSS (proportional set size) counts shared pages once across processes, so the figures of
the driver and the JVM add up. In ``local[N]`` mode the executors run inside the driver's
JVM, so its CPU time is the executors' CPU time plus the (small) driver share.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import psutil

MB = 2**20


def _jvms(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [c for c in proc.children(recursive=True) if c.name() == "java"]
    except psutil.Error:
        return []


def _pss(procs: list[psutil.Process]) -> int:
    total = 0
    for p in procs:
        with suppress(psutil.Error):  # a process that just exited counts nothing
            total += p.memory_full_info().pss
    return total


def _cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        with suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


@contextmanager
def watch(interval_s: float = 0.5) -> Iterator[dict[str, float]]:
    """Yield a dict that, when the block ends, holds the block's peak PSS (MB) and CPU
    seconds of this process (``driver_*``) and of the Spark JVMs it started (``jvm_*``),
    sampled every ``interval_s``. A JVM that starts inside the block counts from its start."""
    me = psutil.Process()
    seen: dict[int, psutil.Process] = {p.pid: p for p in _jvms(me)}
    cpu_before = {"driver": _cpu([me]), "jvm": _cpu(list(seen.values()))}
    peaks = {"driver": 0, "jvm": 0}
    stop = threading.Event()

    def sample() -> None:
        while True:
            for p in _jvms(me):
                seen.setdefault(p.pid, p)
            peaks["driver"] = max(peaks["driver"], _pss([me]))
            peaks["jvm"] = max(peaks["jvm"], _pss(list(seen.values())))
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
            "jvm_peak_pss_mb": round(peaks["jvm"] / MB),
            "driver_cpu_s": round(_cpu([me]) - cpu_before["driver"], 2),
            "jvm_cpu_s": round(_cpu(list(seen.values())) - cpu_before["jvm"], 2),
        }
