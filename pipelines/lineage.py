"""What a model was made from: the lake partitions, the checks they passed, the feature
registry, the libraries and the code. ``register`` writes it into the model's metadata,
and nothing is served or promoted whose lineage says it did not pass the gate.
"""

from __future__ import annotations

import hashlib
import subprocess
from datetime import date
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines import catalog
from pipelines.config import PROJECT_ROOT, Settings

if TYPE_CHECKING:
    from feast import FeatureStore

# The libraries whose versions decide what a model is and how it scores.
LIBRARIES = (
    "xgboost",
    "pyspark",
    "feast",
    "great-expectations",
    "bentoml",
    "apache-airflow",
    "pandas",
    "numpy",
    "scikit-learn",
)


class NotServable(ValueError):
    """A model whose lineage does not show a passed gate."""


def partitions(settings: Settings | Path, days: list[date]) -> dict[str, Any]:
    """The range and count of the lake partitions ``days``, and a SHA-256 of their bytes
    (in date order), so a model names exactly the data it was built from."""
    if not days:
        raise ValueError("a model is trained on at least one partition")
    digest = hashlib.sha256()
    for day in sorted(days):
        with open(catalog.LAKE.path(settings, date=day), "rb") as f:
            digest.update(day.isoformat().encode())
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return {
        "first": min(days).isoformat(),
        "last": max(days).isoformat(),
        "count": len(days),
        "sha256": digest.hexdigest(),
    }


def _without_meta(message: Any) -> Any:
    """``message`` with every nested ``meta`` cleared: Feast keeps registration times and
    materialized intervals there, which change without any definition changing."""
    for field, value in message.ListFields():
        if field.name == "meta":
            message.ClearField("meta")
        elif field.message_type is None:
            continue
        elif hasattr(value, "ListFields"):  # one message
            _without_meta(value)
        else:  # repeated messages, or a map of them
            for item in value.values() if hasattr(value, "values") else value:
                if hasattr(item, "ListFields"):
                    _without_meta(item)
    return message


def registry_hash(store: FeatureStore) -> str:
    """A SHA-256 of every definition in the Feast registry (entities, views, on-demand
    views, services), without Feast's ``meta``: the same definitions hash the same in any
    registry, file or SQL, across ``feast apply`` and materialization."""
    objects = [
        *store.list_entities(),
        *store.list_feature_views(),
        *store.list_on_demand_feature_views(),
        *store.list_feature_services(),
    ]
    specs = sorted(
        _without_meta(o.to_proto()).SerializeToString(deterministic=True) for o in objects
    )
    digest = hashlib.sha256()
    for spec in specs:
        digest.update(hashlib.sha256(spec).digest())
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    return {name: metadata.version(name) for name in LIBRARIES}


def code_version() -> dict[str, Any]:
    """The git commit of the code, and whether tracked files differ from it."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        return {
            "sha": git("rev-parse", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "-uno")),
        }
    except (OSError, subprocess.CalledProcessError):
        return {"sha": "unknown", "dirty": None}


def suites(result: catalog.ValidationResult | None) -> dict[str, Any] | None:
    """A GE validation's verdict and each suite's, for the lineage."""
    if result is None:
        return None
    return {"passed": result.passed, "suites": {k: v.success for k, v in result.suites.items()}}


def check_servable(meta: dict[str, Any]) -> None:
    """Raise :class:`NotServable` unless the model's lineage records a passed gate."""
    gate = meta.get("gate") or {}
    if gate.get("passed") is not True:
        reason = gate.get("reason") or "no gate decision is recorded"
        raise NotServable(f"its lineage says it did not pass the promotion gate ({reason})")
