"""``feature_store.materialize`` (Spark computes the newest rows, Feast writes them) leaves the
online store exactly as Feast's own ``FeatureStore.materialize`` does, on the same snapshots."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import worlds
from feast_repo import feast_repo

from pipelines import contracts

pytestmark = pytest.mark.integration

DAYS = [datetime(2024, 3, d, tzinfo=UTC) for d in range(1, 11)]
START, END = DAYS[2], DAYS[7]  # both ends are in the window


def _snapshots(key: str, features: list[str], entities: int, seed: int) -> pd.DataFrame:
    """Each entity has snapshots on a random subset of the days, some before, in and after
    the window (so some have none in it), with a few missing values."""
    rng = np.random.default_rng(seed)
    rows = [(e, day) for e in range(1, entities + 1) for day in DAYS if rng.random() < 0.35]
    frame = pd.DataFrame(rows, columns=[key, "event_timestamp"])
    values = rng.random((len(frame), len(features))).astype(np.float32)
    values[rng.random(values.shape) < 0.05] = np.nan
    return pd.concat([frame, pd.DataFrame(values, columns=features)], axis=1)


@pytest.fixture(scope="module")
def tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    return (
        _snapshots("user_id", contracts.USER_FEATURES, 300, 11),
        _snapshots("item_id", contracts.ITEM_FEATURES, 500, 12),
    )


def _online_after(tmp_path, tables, load) -> list[tuple]:
    from pipelines import feature_store

    with feast_repo(tmp_path, *tables) as settings:
        feature_store.apply(settings)
        load(settings)
        return worlds.online_rows(settings)


def test_spark_materialize_writes_what_feast_materialize_writes(tmp_path, tables, spark):
    from pipelines import feature_store

    def feasts_own(settings):
        store = feature_store.open_store(settings)
        store.materialize(START, END, [contracts.USER_VIEW, contracts.ITEM_VIEW])

    def ours(settings):
        window = feature_store.materialize(settings, START, END)
        users, items = tables
        for view, frame in ((contracts.USER_VIEW, users), (contracts.ITEM_VIEW, items)):
            in_window = frame["event_timestamp"].between(START, END)
            assert window["rows"][view] == frame.loc[in_window].iloc[:, 0].nunique()

    reference = _online_after(tmp_path / "feast", tables, feasts_own)
    loaded = _online_after(tmp_path / "spark", tables, ours)

    assert len(reference) > 1000
    assert loaded == reference
    # Both window ends count: rows stamped exactly at START and at END are online.
    stamps = {int(row[-1]) for row in loaded}  # epoch seconds in Feast's SQLite table
    assert {int(START.timestamp()), int(END.timestamp())} <= stamps
    assert int(DAYS[8].timestamp()) not in stamps


@pytest.mark.parametrize(
    ("values", "width", "rows"), [(300_000, 48, 6_250), (300_000, 96, 3_125), (10, 96, 1)]
)
def test_a_batch_holds_the_same_number_of_values_however_wide_the_view(values, width, rows):
    """Feast makes a protobuf object per feature value: a wider view gets fewer rows a batch."""
    from pipelines import feature_store
    from pipelines.config import Settings

    settings = Settings(online_write_batch_values=values)
    assert feature_store.batch_rows(settings, width) == rows


def test_materialize_streams_in_batches_and_records_the_interval_in_feasts_registry(
    tmp_path, tables, spark
):
    from pipelines import feature_store

    with feast_repo(tmp_path, *tables) as settings:
        feature_store.apply(settings)
        store = feature_store.open_store(settings)
        width = len(store.get_feature_view(contracts.ITEM_VIEW).features)
        batched = settings.model_copy(update={"online_write_batch_values": 7 * width})
        assert feature_store.batch_rows(batched, width) == 7
        window = feature_store.materialize(batched, START, END + timedelta(seconds=1))
        assert window["rows"][contracts.ITEM_VIEW] > 7 * 10  # many batches
        store = feature_store.open_store(settings)
        view = store.get_feature_view(contracts.ITEM_VIEW)
        assert [(i[0], i[1]) for i in view.materialization_intervals] == [
            (START, END + timedelta(seconds=1))
        ]
