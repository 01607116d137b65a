"""Stable mapping between external string ids (the API's) and internal int64 ids (Feast's).

A new id gets the next free integer; an id once mapped keeps its integer forever,
so features, models and the online store stay valid as new data arrives.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from pipelines import catalog

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

ID_COLUMNS = ["external_id", "internal_id"]


def extend_mapping(existing: pd.DataFrame, external_ids: pd.Series) -> pd.DataFrame:
    """``existing`` plus new ids for the unseen values of ``external_ids`` (sorted, so deterministic)."""
    known = set(existing["external_id"])
    new = sorted(set(external_ids.dropna().astype(str)) - known)
    start = int(existing["internal_id"].max()) + 1 if len(existing) else 1
    added = pd.DataFrame({"external_id": new, "internal_id": range(start, start + len(new))})
    out = pd.concat([existing[ID_COLUMNS], added], ignore_index=True) if len(existing) else added
    return out.astype({"external_id": "string", "internal_id": "int64"})


def read_mapping(path: Path) -> pd.DataFrame:
    if not path.exists():
        return pd.DataFrame(
            {"external_id": pd.Series(dtype="string"), "internal_id": pd.Series(dtype="int64")}
        )
    return pd.read_parquet(path)


def update_mapping(path: Path, external_ids: pd.Series) -> pd.DataFrame:
    """Extend the mapping stored at ``path`` (``catalog.USER_IDS`` or ``ITEM_IDS``) with
    ``external_ids`` and write it back atomically."""
    mapping = extend_mapping(read_mapping(path), external_ids)
    with catalog.atomic_path(path) as tmp:
        mapping.to_parquet(tmp, index=False)
    return mapping


def load_id_map(path: Path) -> dict[str, int]:
    """External -> internal id, for serving."""
    m = read_mapping(path)
    return dict(zip(m["external_id"].astype(str), m["internal_id"].astype(int), strict=True))


def to_internal(ids: pd.Series, mapping: pd.DataFrame) -> pd.Series:
    """Map external ids to internal ones (missing -> <NA>)."""
    lookup = pd.Series(mapping["internal_id"].to_numpy(), index=mapping["external_id"].astype(str))
    return ids.astype(str).map(lookup).astype("Int64")


def to_external(ids: pd.Series, mapping: pd.DataFrame) -> pd.Series:
    """Map internal ids back to external ones (missing -> NaN)."""
    lookup = pd.Series(
        mapping["external_id"].astype(str).to_numpy(),
        index=mapping["internal_id"].astype("int64").to_numpy(),
    )
    return ids.astype("int64").map(lookup)


def distinct_ids(frame: DataFrame, column: str) -> pd.Series:
    """The distinct values of one id column of a Spark frame (small: one row per id)."""
    return frame.select(column).distinct().toPandas()[column].astype("string")


def internal_events(
    spark: SparkSession, lake: DataFrame, users: pd.DataFrame, items: pd.DataFrame
) -> DataFrame:
    """Interactions keyed by internal ids (every id must be mapped): the id maps are
    broadcast, and the events never leave the executors."""
    from pyspark.sql import functions as F

    def lookup(mapping: pd.DataFrame, name: str) -> DataFrame:
        frame = spark.createDataFrame(
            mapping[ID_COLUMNS].astype({"external_id": "str", "internal_id": "int64"})
        )
        return F.broadcast(frame.toDF(name, f"_{name}"))

    joined = lake.join(lookup(users, "user_id"), "user_id").join(
        lookup(items, "item_id"), "item_id"
    )
    return joined.select(
        F.col("_user_id").alias("user_id"),
        F.col("_item_id").alias("item_id"),
        F.col("rating").cast("double"),
        F.col("timestamp").cast("long"),
    )
