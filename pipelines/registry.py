"""Model registry: BentoML's model store holds the models, a JSON pointer names production.

Serving loads the exact tag the pointer (``catalog.PRODUCTION``) names (never ``:latest``), so
promotion and rollback are one atomic file write each, and the model store keeps every version.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pipelines import catalog, contracts
from pipelines.config import Settings

if TYPE_CHECKING:
    import xgboost

DEFAULT_MODEL_NAME = "content_ranker"
MAX_HISTORY = 20


def _bentoml(settings: Settings):
    """``bentoml``, with its model store in ``settings.bentoml_home``.

    BentoML resolves ``BENTOML_HOME`` once per process; if something imported and used
    it before our settings were exported, point its store at ours explicitly.
    """
    settings.export_env()
    import bentoml
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models import ModelStore

    home = str(settings.bentoml_home)
    if os.path.realpath(BentoMLContainer.bentoml_home.get()) != os.path.realpath(home):
        models = settings.bentoml_home / "models"
        models.mkdir(parents=True, exist_ok=True)
        BentoMLContainer.bentoml_home.set(home)
        BentoMLContainer.model_store.set(ModelStore(str(models)))
    return bentoml


def _json_like(value: Any) -> Any:
    """``value`` as plain JSON types BentoML accepts: numpy scalars, paths and dates become
    numbers or strings, and ``None`` entries are dropped (BentoML metadata rejects them)."""
    return _drop_none(json.loads(json.dumps(value, default=_json_default)))


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value if v is not None]
    return value


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy scalar
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, datetime):
        return obj.isoformat()
    return str(obj)


def save_model(
    booster: xgboost.Booster,
    *,
    name: str = DEFAULT_MODEL_NAME,
    metadata: dict,
    labels: dict | None = None,
    settings: Settings,
) -> str:
    """Store ``booster`` with its lineage ``metadata``; returns the new tag (``name:version``)."""
    bentoml = _bentoml(settings)
    meta = _json_like(metadata)
    meta.setdefault("feature_names", list(contracts.MODEL_FEATURES))
    meta.setdefault("feature_service", contracts.FEATURE_SERVICE)
    model = bentoml.xgboost.save_model(
        name,
        booster,
        metadata=meta,
        labels={str(k): str(v) for k, v in (labels or {}).items()},
    )
    return str(model.tag)


def load_booster(tag: str, settings: Settings) -> xgboost.Booster:
    """The booster stored under ``tag`` (raises ``bentoml.exceptions.NotFound`` if absent)."""
    bentoml = _bentoml(settings)
    return bentoml.xgboost.load_model(tag)


def model_info(tag: str, settings: Settings) -> dict:
    """Tag, lineage metadata, labels and creation time of a stored model."""
    bentoml = _bentoml(settings)
    model = bentoml.models.get(tag)
    return {
        "tag": str(model.tag),
        "metadata": dict(model.info.metadata),
        "labels": dict(model.info.labels),
        "creation_time": model.info.creation_time.isoformat(),
    }


def evaluated_tag(tag: str, settings: Settings) -> str:
    """The model the gate evaluated for ``tag``: its ``evaluated_model`` when ``tag`` is a
    refit, else ``tag`` itself."""
    return model_info(tag, settings)["metadata"].get("evaluated_model") or tag


def list_models(settings: Settings, name: str = DEFAULT_MODEL_NAME) -> list[str]:
    """Every stored tag of ``name``, oldest first."""
    bentoml = _bentoml(settings)
    models = [m for m in bentoml.models.list() if m.tag.name == name]
    return [str(m.tag) for m in sorted(models, key=lambda m: m.info.creation_time)]


# --- the production pointer ---------------------------------------------------------------


def read_pointer(settings: Settings) -> catalog.ProductionPointer | None:
    """The production pointer, or None if nothing was ever promoted."""
    return catalog.PRODUCTION.load_or_none(settings)


def production_tag(settings: Settings) -> str | None:
    """The tag serving should load, or None if nothing was ever promoted."""
    pointer = read_pointer(settings)
    return pointer.tag if pointer else None


def promote(tag: str, settings: Settings, reason: str) -> catalog.ProductionPointer:
    """Point production at ``tag``, keeping the old tag in history. The model must exist in
    the store and its lineage must record a passed gate (``lineage.NotServable`` if not)."""
    from pipelines.lineage import NotServable, check_servable

    model = _bentoml(settings).models.get(tag)  # fail before touching the pointer
    try:
        check_servable(dict(model.info.metadata))
    except NotServable as exc:
        raise NotServable(f"{tag} cannot be promoted: {exc}") from None
    old = read_pointer(settings)
    previous = list(old.previous) if old else []
    if old and old.tag != tag:
        previous.insert(0, old.tag)
    pointer = catalog.ProductionPointer(
        tag=tag, previous=previous[:MAX_HISTORY], promoted_at=datetime.now(UTC), reason=reason
    )
    catalog.PRODUCTION.save(settings, pointer)
    return pointer


def rollback(settings: Settings, reason: str = "rollback") -> str:
    """Point production back at the previous tag; returns it."""
    old = read_pointer(settings)
    if not old or not old.previous:
        raise RuntimeError("no previous production model to roll back to")
    tag, *rest = old.previous
    pointer = catalog.ProductionPointer(
        tag=tag,
        previous=rest,
        promoted_at=datetime.now(UTC),
        reason=reason,
        rolled_back_from=old.tag,
    )
    catalog.PRODUCTION.save(settings, pointer)
    return tag
