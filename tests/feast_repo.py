"""A throwaway copy of the Feast repo whose offline sources hold hand-made snapshots."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

from pipelines import catalog
from pipelines.config import PROJECT_ROOT, Settings, get_settings


@contextmanager
def feast_repo(data_dir: Path, users: pd.DataFrame, items: pd.DataFrame) -> Iterator[Settings]:
    """Settings on a temporary copy of ``features/`` whose offline sources hold ``users``
    and ``items`` (microsecond timestamps, as Spark writes them)."""
    repo = data_dir / "repo"
    shutil.copytree(PROJECT_ROOT / "features", repo, ignore=shutil.ignore_patterns("__pycache__"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CR_DATA_DIR", str(data_dir))
        mp.setenv("CR_FEATURE_REPO", str(repo))
        get_settings.cache_clear()
        for mod in [m for m in sys.modules if m == "features" or m.startswith("features.")]:
            mp.delitem(sys.modules, mod)
        settings = get_settings()
        for kind, frame in (("user", users), ("item", items)):
            table = catalog.FEATURE_TABLE.path(settings, kind=kind)
            table.mkdir(parents=True)
            frame.to_parquet(
                table / "part-0.parquet",
                index=False,
                coerce_timestamps="us",
                allow_truncated_timestamps=True,
            )
        yield settings
        get_settings.cache_clear()
