"""The ranking service: features from Feast's online store, scores from the production booster.

The model is the tag the ``production`` pointer names (``CR_MODEL_TAG`` pins another one,
which is how infra-validation serves a candidate before promotion). Each request
``stat``s the pointer file and reloads the booster if it changed, so a promotion or a
rollback reaches a running server without a restart. Serving never trains.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import bentoml
import msgspec
import numpy as np
from starlette.responses import JSONResponse, Response

from pipelines import catalog, contracts
from pipelines.config import Settings, get_settings
from serving.contract import (
    MAX_BODY_BYTES,
    LeanRankRequest,
    ModelVersionResponse,
    RankRequest,
    RankResponse,
)
from serving.guard import RequestGuard
from serving.lean import LeanRoute
from serving.online import stat_key as _stat_key

log = logging.getLogger("content_ranker.serving")

PINNED_TAG_ENV = "CR_MODEL_TAG"


# --- state that follows files on disk ---------------------------------------------------------


class _IdMap:
    """External -> internal ids, re-read when the parquet file changes."""

    def __init__(self, path: Path):
        self.path = path
        self._key: tuple | None = ()
        self.mapping: dict[str, int] = {}

    def get(self) -> dict[str, int]:
        key = _stat_key(self.path)
        if key != self._key:
            from pipelines.ids import load_id_map

            self.mapping = load_id_map(self.path) if key is not None else {}
            self._key = key
        return self.mapping


@dataclass(frozen=True)
class LoadedModel:
    """One loaded model; swapped as a whole, so a request never mixes two models."""

    tag: str
    booster: Any
    metadata: dict[str, Any]
    column_index: np.ndarray  # model column j = MODEL_FEATURES[column_index[j]]


class _Model:
    """The booster to serve: pinned by ``CR_MODEL_TAG`` or named by the production pointer.

    A pointer change is loaded on a background thread while requests keep using the
    current model; the swap is one reference assignment. Only the very first load
    blocks, since there is nothing to serve before it.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self.pointer = catalog.PRODUCTION.path(settings)  # stat()ed on every request
        self.pinned = os.environ.get(PINNED_TAG_ENV) or None
        self.current: LoadedModel | None = None
        self.error: str | None = None
        self._pointer_key: tuple | None = ()
        self._lock = threading.Lock()
        self._loading: str | None = None

    def refresh(self) -> LoadedModel | None:
        """The model to use for this request (a stat() when nothing changed)."""
        if self.pinned:
            if self.current is None and self.error is None:
                with self._lock:
                    self._load(self.pinned)
            return self.current
        key = _stat_key(self.pointer)
        if key != self._pointer_key:
            with self._lock:
                if key != self._pointer_key:
                    self._pointer_key = key
                    self._follow_pointer()
        return self.current

    def watch(self, every_s: float = 0.5) -> None:
        """Follow the pointer in the background too, so an idle worker is never behind."""

        def loop() -> None:
            while True:
                time.sleep(every_s)
                try:
                    self.refresh()
                except Exception:  # never let the watcher die
                    log.exception("model watcher")

        threading.Thread(target=loop, name="model-watcher", daemon=True).start()

    def _follow_pointer(self) -> None:
        from pipelines import registry

        try:
            tag = registry.production_tag(self.settings)
        except (OSError, ValueError) as exc:  # a torn or hand-edited pointer
            self.error = f"cannot read production pointer: {exc}"
            log.error(self.error)
            return
        if tag is None:
            self.error = "no production model: nothing has been promoted yet"
        elif self.current is None:
            self._load(tag)
        elif tag != self.current.tag and tag != self._loading:
            self._loading = tag
            threading.Thread(target=self._load, args=(tag,), daemon=True).start()

    def _load(self, tag: str) -> None:
        from pipelines import lineage, registry

        try:
            info = registry.model_info(tag, self.settings)
            lineage.check_servable(info["metadata"])
            booster = registry.load_booster(tag, self.settings)
            # One request is ~100 rows: OpenMP threads cost more than they save, and
            # with several workers on few cores they fight each other.
            booster.set_param({"nthread": self.settings.serving_predict_threads})
            columns = info["metadata"].get("feature_names") or list(contracts.MODEL_FEATURES)
            if booster.num_features() != len(columns):
                raise ValueError(
                    f"model expects {booster.num_features()} features, metadata names "
                    f"{len(columns)}"
                )
            index = np.array([contracts.MODEL_FEATURES.index(c) for c in columns])
        except lineage.NotServable as exc:  # keep serving the previous model, if any
            self.error = f"refusing to load model {tag!r}: {exc}"
            log.error(self.error)
            return
        except Exception as exc:  # keep serving the previous model, if any
            self.error = f"cannot load model {tag!r}: {exc}"
            log.exception("cannot load model %s", tag)
            return
        finally:
            self._loading = None
        self.current = LoadedModel(info["tag"], booster, info["metadata"], index)
        self.error = None
        log.info("serving model %s", tag)


def _unavailable(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=503)


_JSON = msgspec.json.Encoder()


async def _lean_rank(request: LeanRankRequest) -> tuple[int, bytes] | None:
    """``/rank`` for ``serving.lean``: the running service's answer (None before it runs)."""
    try:
        service = bentoml.get_current_service()
    except bentoml.exceptions.BentoMLException:
        return None
    return await service.answer(request.user_id, request.item_ids, request.k)


REQUEST_SECONDS = bentoml.metrics.Histogram(
    name="rank_request_seconds",
    documentation="Time inside /rank, by phase (features, model, total).",
    labelnames=["phase", "path", "model_version"],
    buckets=(0.0005, 0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
)
OUTCOMES = bentoml.metrics.Counter(
    name="rank_outcomes",
    documentation="Requests that used the cold-start fallback or met stale features.",
    labelnames=["outcome", "model_version"],
)


@bentoml.service(
    name="content_ranker",
    workers=get_settings().serving_workers,
    threads=1,
    logging={"access": {"enabled": False}},
    traffic={"timeout": 30},
    # No traces are sampled unless configured (tracing.sample_rate), but OpenTelemetry's
    # middleware still opened three spans per request: ~0.2 ms of CPU on /rank. An operator
    # who samples traces sets CR_SERVING_TRACE_EXCLUDED_URLS (a JSON list; [] traces all).
    tracing={"excluded_urls": list(get_settings().serving_trace_excluded_urls)},
)
class Ranker:
    """Learning-to-rank scoring for the content feed."""

    def __init__(self) -> None:
        from pipelines.feature_store import open_store
        from serving.online import FastReader, SdkReader, ServedLog

        self.settings = get_settings()
        self.store = open_store(self.settings)
        self.users = _IdMap(catalog.USER_IDS.path(self.settings))
        self.items = _IdMap(catalog.ITEM_IDS.path(self.settings))
        self.model = _Model(self.settings)
        self.path = self.settings.serving_path
        reader = {"fast": FastReader, "feast": SdkReader}[self.path]
        self.reader = reader(self.store, self.settings)
        self.served_log = ServedLog(self.settings)
        self.model.refresh()
        self.model.watch()
        if self.model.error:
            log.warning("%s", self.model.error)
        self._warm_up()
        # Everything loaded so far lives as long as the process: keep it out of the
        # collector's passes. Full passes over the Feast/pandas heap were the 40-120 ms
        # tail of /rank and /echo alike (make bench-serve).
        gc.collect()
        gc.freeze()

    def _warm_up(self) -> None:
        """Import and touch everything the first request would, before freezing the heap."""
        from pipelines.scoring import score

        batch = self.reader.read(None, [1, 2])
        model = self.model.current
        if model is not None:
            score(model.booster, batch.matrix[:, model.column_index])

    def __is_ready__(self) -> bool:
        self.model.refresh()
        return self.model.refresh() is not None

    @bentoml.api(input_spec=RankRequest, route="/rank")
    async def rank(self, user_id: str, item_ids: list[str], k: int | None = None) -> RankResponse:
        """Score the known items for the user, best first; unknown users get popularity."""
        status, body = await self.answer(user_id, item_ids, k)
        return Response(body, status_code=status, media_type="application/json")

    async def answer(self, user_id: str, item_ids: list[str], k: int | None) -> tuple[int, bytes]:
        """``/rank``'s status and JSON body, for BentoML's route and for ``serving.lean``'s."""
        if self.path == "fast":  # ~1 ms of CPU: cheaper on the event loop than a thread hop
            return self._rank(user_id, item_ids, k)
        return await anyio.to_thread.run_sync(self._rank, user_id, item_ids, k)

    def _rank(self, user_id: str, item_ids: list[str], k: int | None) -> tuple[int, bytes]:
        from pipelines.scoring import score

        started = time.perf_counter()
        model = self.model.refresh()  # this request finishes on this model
        if model is None:
            return 503, _JSON.encode({"error": self.model.error or "no model loaded"})
        tag = model.tag

        item_map, user_map = self.items.get(), self.users.get()
        requested = list(dict.fromkeys(item_ids))  # de-duplicated, order kept
        known = [i for i in requested if i in item_map]
        unknown = [i for i in requested if i not in item_map]
        internal_user = user_map.get(user_id)
        internal_items = [item_map[i] for i in known]
        batch = self.reader.read(internal_user, internal_items)
        read_done = time.perf_counter()

        if batch.store_unavailable:
            OUTCOMES.labels(outcome="store_unavailable", model_version=tag).inc()
        if internal_user is None or not (batch.user_found or batch.user_stale):
            scores, fallback = batch.popularity, True
        else:
            self.served_log.maybe_log(internal_user, internal_items, batch, tag)
            matrix = batch.matrix[:, model.column_index]
            scores, fallback = score(model.booster, matrix).astype("float64"), False
        scores = np.where(np.isfinite(scores), scores, 0.0)
        order = np.argsort(-scores, kind="stable")[: k or None]
        done = time.perf_counter()

        labels = {"path": self.path, "model_version": tag}
        REQUEST_SECONDS.labels(phase="features", **labels).observe(read_done - started)
        REQUEST_SECONDS.labels(phase="model", **labels).observe(done - read_done)
        REQUEST_SECONDS.labels(phase="total", **labels).observe(done - started)
        if fallback:
            OUTCOMES.labels(outcome="fallback", model_version=tag).inc()
        if batch.user_stale or batch.item_stale.any():
            OUTCOMES.labels(outcome="stale", model_version=tag).inc()
        # RankResponse's JSON, written directly: a pydantic object per item and BentoML's
        # serialisation of them cost more than the model (the schemathesis test checks the
        # body against the documented RankResponse).
        ranked = zip(order.tolist(), scores[order].tolist(), strict=True)
        body = {
            "model_version": tag,
            "items": [{"item_id": known[i], "score": s} for i, s in ranked],
            "unknown_item_ids": unknown,
            "fallback": fallback,
            "online_store_unavailable": bool(batch.store_unavailable),
            "stale_user": bool(batch.user_stale),
            "stale_item_ids": [known[i] for i in np.flatnonzero(batch.item_stale)],
        }
        return 200, _JSON.encode(body)

    @bentoml.api(input_spec=RankRequest, route="/echo")
    async def echo(self, user_id: str, item_ids: list[str], k: int | None = None) -> dict:
        """The framework floor for benchmarks: same request parsing, no features, no model."""
        return {"user_id": user_id, "items": len(item_ids)}

    @bentoml.api(route="/model_version")
    def model_version(self) -> ModelVersionResponse:
        """The model serving right now, with a short lineage."""
        model = self.model.refresh()
        if model is None:
            return _unavailable(self.model.error or "no model loaded")
        short = {k: v for k, v in model.metadata.items() if k != "feature_names"}
        return ModelVersionResponse(model_version=model.tag, metadata=short)


# Bad media types, oversized bodies and the shape of 4xx bodies, before BentoML sees them;
# then valid /rank bodies answered without BentoML's request path (serving.lean).
Ranker.add_asgi_middleware(
    RequestGuard, routes=["/rank", "/echo", "/model_version"], max_body_bytes=MAX_BODY_BYTES
)
Ranker.add_asgi_middleware(
    LeanRoute,
    route="/rank",
    body=LeanRankRequest,
    handler=_lean_rank,
    server=f"BentoML Service/{Ranker.name}",  # the Server header of BentoML's answers
)
