"""Settings on a throwaway data directory whose Feast offline sources hold hand-made snapshots."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

from pipelines import catalog
from pipelines.config import Settings


@contextmanager
def feast_repo(
    data_dir: Path,
    users: pd.DataFrame,
    items: pd.DataFrame,
    user_factors: pd.DataFrame | None = None,
    item_factors: pd.DataFrame | None = None,
) -> Iterator[Settings]:
    """Settings on ``data_dir`` whose feature tables (the offline sources of the repo in
    ``features/``) hold ``users`` and ``items`` (microsecond timestamps, as Spark writes
    them), and the factor tables the factor frames, if given. The environment is restored
    on exit (``open_store`` exports ``CR_DATA_DIR``)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CR_DATA_DIR", str(data_dir))
        settings = Settings(data_dir=data_dir)
        tables = [
            (catalog.FEATURE_TABLE.path(settings, kind="user"), users),
            (catalog.FEATURE_TABLE.path(settings, kind="item"), items),
            (catalog.FACTOR_TABLE.path(settings, kind="user"), user_factors),
            (catalog.FACTOR_TABLE.path(settings, kind="item"), item_factors),
        ]
        for table, frame in tables:
            if frame is None:
                continue
            table.mkdir(parents=True)
            frame.to_parquet(
                table / "part-0.parquet",
                index=False,
                coerce_timestamps="us",
                allow_truncated_timestamps=True,
            )
        yield settings
