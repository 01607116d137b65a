"""Offline sources: parquet snapshots written by pipelines.features (Spark)."""

from feast import FileSource

from pipelines import catalog
from pipelines.config import get_settings

user_activity_source = FileSource(
    name="user_activity_source",
    path=str(catalog.FEATURE_TABLE.path(get_settings(), kind="user")),
    timestamp_field="event_timestamp",
    description="Per-user snapshots; a row at day d uses only events strictly before d.",
)

item_stats_source = FileSource(
    name="item_stats_source",
    path=str(catalog.FEATURE_TABLE.path(get_settings(), kind="item")),
    timestamp_field="event_timestamp",
    description="Per-item snapshots; a row at day d uses only events strictly before d.",
)
