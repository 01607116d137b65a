"""Shared fixtures: one local SparkSession for the whole test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from pipelines.config import Settings
from pipelines.spark import get_spark

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# ``Settings.export_env`` points these at the settings' data dir; the fixture's
# throwaway directory must not leak into other tests' environment.
_LEAKED_ENV = ("CR_DATA_DIR", "BENTOML_HOME")


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
