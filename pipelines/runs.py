"""Per-run bookkeeping: every stage's output is keyed by the run's logical date."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from datetime import date
from typing import Any

from pipelines import catalog
from pipelines.config import get_settings


def stage(name: str) -> Callable:
    """Record a stage's wall time in the run's ``catalog.TIMINGS`` and its peak PSS and CPU
    time (driver and Spark JVM, :mod:`pipelines.resources`) in ``catalog.RESOURCES``; a
    re-run overwrites the stage's entries. The heap the stage freed goes back to the
    operating system when it ends (:func:`pipelines.resources.release_memory`)."""
    from pipelines import resources

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(logical_date: date | str, *args: Any, **kwargs: Any) -> Any:
            day = catalog.as_date(logical_date)
            started = time.perf_counter()
            try:
                with resources.watch() as cost:
                    return fn(day, *args, **kwargs)
            finally:
                settings = get_settings()
                for entry, value in (
                    (catalog.TIMINGS, round(time.perf_counter() - started, 2)),
                    (catalog.RESOURCES, cost),
                ):
                    recorded = entry.load_or_none(settings, date=day)
                    entry.save(
                        settings, {**(recorded.root if recorded else {}), name: value}, date=day
                    )
                resources.release_memory()

        return wrapper

    return decorate
