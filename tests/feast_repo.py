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
def feast_repo(data_dir: Path, users: pd.DataFrame, items: pd.DataFrame) -> Iterator[Settings]:
    """Settings on ``data_dir`` whose feature tables (the offline sources of the repo in
    ``features/``) hold ``users`` and ``items`` (microsecond timestamps, as Spark writes
    them). The environment is restored on exit (``open_store`` exports ``CR_DATA_DIR``)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CR_DATA_DIR", str(data_dir))
        settings = Settings(data_dir=data_dir)
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
