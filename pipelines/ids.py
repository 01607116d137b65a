"""Stable mapping between external string ids (the API's) and internal int64 ids (Feast's).

A new id gets the next free integer; an id once mapped keeps its integer forever,
so features, models and the online store stay valid as new data arrives.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

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
    """Extend the mapping stored at ``path`` with ``external_ids`` and write it back."""
    mapping = extend_mapping(read_mapping(path), external_ids)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    mapping.to_parquet(tmp, index=False)
    tmp.replace(path)
    return mapping


def load_id_map(path: Path) -> dict[str, int]:
    """External -> internal id, for serving."""
    m = read_mapping(path)
    return dict(zip(m["external_id"].astype(str), m["internal_id"].astype(int), strict=True))


def to_internal(ids: pd.Series, mapping: pd.DataFrame) -> pd.Series:
    """Map external ids to internal ones (missing -> <NA>)."""
    lookup = pd.Series(mapping["internal_id"].to_numpy(), index=mapping["external_id"].astype(str))
    return ids.astype(str).map(lookup).astype("Int64")


def internal_events(lake: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """Interactions keyed by internal ids (every id must be mapped)."""
    return pd.DataFrame(
        {
            "user_id": to_internal(lake["user_id"], users).astype("int64"),
            "item_id": to_internal(lake["item_id"], items).astype("int64"),
            "rating": lake["rating"].astype("float64"),
            "timestamp": lake["timestamp"].astype("int64"),
        }
    )
