"""Per-run bookkeeping: every stage's output is keyed by the run's logical date."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from pipelines.config import get_settings


def as_date(value: date | str) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


def write_json(path: Path, payload: Any) -> Path:
    """Write atomically, so a killed task never leaves half a file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    tmp.replace(path)
    return path


def read_json(path: Path, default: Any = None) -> Any:
    return json.loads(path.read_text()) if path.exists() else default


def stage(name: str) -> Callable:
    """Record a stage's wall time in ``runs/<date>/timings.json`` and its peak PSS and CPU
    time (driver and Spark JVM, :mod:`pipelines.resources`) in ``resources.json``; a re-run
    overwrites the stage's entries."""
    from pipelines import resources

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(logical_date: date | str, *args: Any, **kwargs: Any) -> Any:
            day = as_date(logical_date)
            started = time.perf_counter()
            try:
                with resources.watch() as cost:
                    return fn(day, *args, **kwargs)
            finally:
                run_dir = get_settings().run_dir(day)
                for file, value in (
                    ("timings.json", round(time.perf_counter() - started, 2)),
                    ("resources.json", cost),
                ):
                    recorded = read_json(run_dir / file, {})
                    recorded[name] = value
                    write_json(run_dir / file, recorded)

        return wrapper

    return decorate
