"""Shared fixtures: one local SparkSession per test process, and headless Chromium; and the
order in which ``make test`` (``pytest -n 2 --dist loadfile``) hands modules to its workers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pipelines.config import Settings
from pipelines.spark import get_spark

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# A pytest-xdist worker runs under execnet, whose ``__main__`` has neither a file nor a spec.
# ``pyspark.sql.connect`` takes that for its own doctest run and calls ``sys.exit(0)`` on
# import (``pyspark/sql/connect/utils.py``), which Great Expectations' import reaches and
# does not catch: every test using GE failed. Give the worker's ``__main__`` the file a plain
# ``pytest`` process has: the console script, whose body is guarded by ``__name__``.
_main = sys.modules["__main__"]
if (
    os.environ.get("PYTEST_XDIST_WORKER")
    and _main.__spec__ is None
    and not hasattr(_main, "__file__")
):
    _main.__file__ = str(Path(sys.executable).with_name("pytest"))

# Every Spark JVM the suite starts, in this process and in the DAG runs, schedulers and
# clusters it launches (they inherit the environment): the suite is CPU-bound on 2 cores, and
# its Spark jobs are small and many, so JVM start-up and JIT dominate (the saving is measured
# in the README's "make test" paragraph). These flags change no result, only how the JVM
# compiles and collects. C1 alone reserves a 48 MB code cache, not the 240 MB of tiered
# compilation: a whole DAG in one ``airflow dags test`` process filled it, and the JVM then
# failed with "Out of space in CodeCache for method handle intrinsic" (a RecursionError in
# py4j on the Python side). Keep the default size.
os.environ.setdefault(
    "CR_SPARK_JAVA_OPTIONS",
    "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -XX:ReservedCodeCacheSize=240m",
)

# ``Settings.export_env`` points these at the settings' data dir; the fixture's
# throwaway directory must not leak into other tests' environment.
_LEAKED_ENV = ("CR_DATA_DIR", "BENTOML_HOME")


# The modules that run whole DAGs with a real scheduler or a cluster, slowest first. ``make
# test`` gives each of its two workers whole modules in collection order
# (``--no-loadscope-reorder``), two each to start with, so the two longest start at once
# and the short modules fill in behind them. Much
# of their time is waiting: on scheduler heartbeats, task start-up, a killed worker's timeout.
# The suite is CPU-bound on 2 cores all the same; two workers took 31 min where one process
# had run 35 % of the tests after 39 min, on the same machine the same day (README).
SLOWEST_FIRST = ("test_backfill.py", "test_cluster_e2e.py", "test_e2e.py", "test_cluster.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable within a rank


def pytest_assertrepr_compare(op: str, left: object, right: object) -> list[str] | None:
    """A short report for ``==`` on two long sequences: pytest's own diff of them is
    quadratic, and one failed comparison of online-store rows ran for over an hour (and
    timed CI out) before printing anything."""
    sequences = (list, tuple)
    if op != "==" or not isinstance(left, sequences) or not isinstance(right, sequences):
        return None
    if max(len(left), len(right)) <= 200:
        return None
    first = next(
        (i for i, (a, b) in enumerate(zip(left, right, strict=False)) if a != b),
        min(len(left), len(right)),
    )
    return [
        f"two sequences of {len(left)} and {len(right)} items differ",
        f"first difference at index {first}:",
        f"  left:  {left[first] if first < len(left) else '(ended)'!r:.500}",
        f"  right: {right[first] if first < len(right) else '(ended)'!r:.500}",
    ]


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkSession]:
    """``local[2]`` SparkSession built by the project's own ``get_spark``."""
    saved = {k: os.environ.get(k) for k in _LEAKED_ENV}
    session = get_spark(Settings(data_dir=tmp_path_factory.mktemp("spark")))
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    yield session
    session.stop()


@pytest.fixture
def chromium_dom(tmp_path: Path) -> Callable[[Path], str]:
    """Render a local page in headless Chromium and return its DOM (skips without Chromium).

    The flags keep it off this machine's closed network and out of any user profile.
    """
    binary = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(binary).is_file():
        pytest.skip("needs headless Chromium at /usr/bin/chromium (apt-get install -y chromium)")

    def render(page: Path) -> str:
        done = subprocess.run(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={tmp_path / 'chromium-profile'}",
                "--virtual-time-budget=5000",
                "--dump-dom",
                page.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    return render
