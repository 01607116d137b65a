"""Data contracts as code: Great Expectations suites for every data hand-off, with quarantine.

Suites (one checkpoint each, all in the File context under ``settings.gx_dir``):

- ``raw_interactions``: a batch of daily partitions (:func:`validate_interactions`);
- ``user_features`` / ``item_features``: the Feast offline sources (:func:`validate_features`);
- ``training_set``: the point-in-time joined ranking queries (:func:`validate_training_set`).

Thresholds come from :class:`~pipelines.config.Settings` (see :data:`DEFAULTS` for the fields
and the values used while a field is absent). Every run rebuilds the local Data Docs site.

GE 1.x is imported inside the functions: it is slow to import and only this stage needs it.
Its checkpoint never raises on failed expectations, so callers must look at ``passed``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time as wall_clock
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from pipelines import catalog
from pipelines.config import Settings
from pipelines.contracts import (
    INTERACTION_COLUMNS,
    ITEM_FEATURES,
    ITEM_GENRES,
    MODEL_FEATURES,
    USER_AFFINITY,
    USER_FEATURES,
)

SUITE_NAME = "raw_interactions"
DATASOURCE_NAME = "interactions"
ASSET_NAME = "raw_interactions_frame"
BATCH_DEFINITION_NAME = "whole_frame"
VALIDATION_NAME = "raw_interactions_validation"
CHECKPOINT_NAME = "raw_interactions_checkpoint"
FRAMES_DATASOURCE_NAME = "pipeline_frames"  # feature tables and training sets
TRAINING_SUITE_NAME = "training_set"

PARTITION_COLUMN = "partition_date"
EVENT_DATE_COLUMN = "event_date"  # derived here from ``timestamp``, never read from upstream
ITEM_KNOWN_COLUMN = "item_known"  # derived here: is ``item_id`` in the caller's known items
EXPECTED_COLUMNS = [*INTERACTION_COLUMNS, PARTITION_COLUMN]

# Derived per row of the training set (from the whole set, before any sampling).
QUERY_SIZE_COLUMN = "query_size"
QUERY_POSITIVES_COLUMN = "query_positives"
IS_POSITIVE_COLUMN = "is_positive"
TRAINING_KEYS = ["query_id", "user_id", "item_id", "event_timestamp"]

# A user (item) has history before the query time iff the join found a feature row for
# it, i.e. this always-present count is not null. Without history every feature of the
# view is null, as expected (a new user or item; XGBoost handles missing values).
USER_HISTORY = "user_cnt_all.notnull()"
ITEM_HISTORY = "item_pop_all.notnull()"
# Features that can be null with history too: affinities need a genre among the user's
# items, age needs a release year (both optional item metadata); genre_match needs both.
SNAPSHOT_SCORES = {"als_score", "content_sim", "recent_sim"}
METADATA_FEATURES = {*USER_AFFINITY, "item_age_years", "genre_match"}

# Settings fields this module reads, with the value used while Settings lacks the field.
DEFAULTS: dict[str, float | int] = {
    "max_duplicate_rate": 0.0,  # share of raw rows in a duplicated (user, item, timestamp)
    "volume_min_ratio": 0.2,  # rows per day vs the trailing mean of up to 7 partitions
    "volume_max_ratio": 5.0,
    "max_unknown_item_share": 0.5,  # raw rows whose item is not among the known items
    "max_feature_null_fraction": 0.05,  # per feature column of the feature tables
    "max_history_null_fraction": 0.0,  # per history feature, of rows whose entity has history
    "max_training_null_fraction": 0.5,  # same, per feature of METADATA_FEATURES
    "min_positive_share": 0.01,  # share of training rows with label > 0
    "max_positive_share": 0.9,
    "validation_sample_rows": 200_000,  # feature tables / training sets above this are sampled
    "validation_results_kept": 100,  # stored GE results per suite (0 = all)
}

log = logging.getLogger(__name__)


def _setting(settings: Settings, name: str) -> Any:
    """A threshold from ``settings``, or its default in :data:`DEFAULTS` while it is absent."""
    return getattr(settings, name, DEFAULTS[name])


def _mostly(max_bad_share: float) -> dict[str, float]:
    """``mostly`` kwargs for a tolerated share of bad rows; none at all when nothing is tolerated.

    Leaving ``mostly`` out at 0 % keeps the expectation (and its Data Docs text) as strict
    as a plain one.
    """
    share = min(max(float(max_bad_share), 0.0), 1.0)
    return {"mostly": 1.0 - share} if share > 0 else {}


def _day_bounds(partition_dates: list[date]) -> tuple[int, int]:
    """Unix seconds of the first and last second (inclusive) of the partitions' UTC days."""
    start = datetime.combine(min(partition_dates), time(), tzinfo=UTC)
    end = datetime.combine(max(partition_dates) + timedelta(days=1), time(), tzinfo=UTC)
    return int(start.timestamp()), int(end.timestamp()) - 1


def _with_event_date(df: pd.DataFrame) -> pd.DataFrame:
    """Copy of ``df`` plus the UTC day of each ``timestamp``; unparseable ones give nulls.

    Without a ``timestamp`` column nothing is derived: the column-set expectation then fails.
    """
    out = df.copy()
    if "timestamp" in out.columns:
        seconds = pd.to_numeric(out["timestamp"], errors="coerce")
        stamps = pd.to_datetime(seconds, unit="s", utc=True, errors="coerce")
        # Each distinct day formatted once (strftime per row: 1.5 s per 1M rows); a null
        # timestamp's code is -1, which picks the trailing None.
        codes, days = pd.factorize(stamps.dt.floor("D"))
        labels = np.append(days.strftime("%Y-%m-%d").to_numpy(dtype=object), None)
        out[EVENT_DATE_COLUMN] = labels[codes]
    return out


def _with_item_known(df: pd.DataFrame, known_item_ids: set[str]) -> pd.DataFrame:
    """``df`` plus whether each ``item_id`` is known (a null id is unknown), in place.

    Like ``event_date``: without an ``item_id`` column nothing is derived, and the
    column-set expectation fails.
    """
    if "item_id" in df.columns:
        known = {str(i) for i in known_item_ids}
        df[ITEM_KNOWN_COLUMN] = (
            df["item_id"].astype("string").isin(known).fillna(False).astype(bool)
        )
    return df


def _volume_bounds(
    trailing_daily_rows: list[int], n_days: int, min_ratio: float, max_ratio: float
) -> tuple[int, int] | None:
    """Allowed total rows of an ``n_days`` batch: rows per day within ratios of the trailing mean.

    ``None`` when the trailing partitions hold no rows at all: there is no baseline.
    """
    mean = sum(trailing_daily_rows) / len(trailing_daily_rows)
    if mean <= 0:
        return None
    # Rounded first so that e.g. 0.2 * 100 = 20.000000000000004 does not demand 21 rows.
    low = math.ceil(round(min_ratio * mean * n_days, 6))
    high = math.floor(round(max_ratio * mean * n_days, 6))
    return low, high


def _build_suite(
    settings: Settings, *, with_volume: bool = False, with_known_items: bool = False
) -> Any:
    """The ``raw_interactions`` suite; per-run values come from suite parameters.

    ``timestamp_min``/``timestamp_max`` (the batch's days) and ``now`` always;
    ``volume_min``/``volume_max`` with ``with_volume``. The unknown-item check needs the
    derived ``item_known`` column, so it and that column exist only ``with_known_items``.
    """
    import great_expectations as gx
    import great_expectations.expectations as gxe

    derived = [EVENT_DATE_COLUMN, *([ITEM_KNOWN_COLUMN] if with_known_items else [])]
    expectations = [
        gxe.ExpectTableColumnsToMatchSet(
            column_set=[*EXPECTED_COLUMNS, *derived], exact_match=True
        ),
        *(gxe.ExpectColumnValuesToNotBeNull(column=c) for c in INTERACTION_COLUMNS),
        gxe.ExpectColumnValuesToBeBetween(
            column="rating", min_value=settings.rating_min, max_value=settings.rating_max
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="timestamp",
            min_value={"$PARAMETER": "timestamp_min"},
            max_value={"$PARAMETER": "timestamp_max"},
        ),
        gxe.ExpectColumnMaxToBeBetween(
            column="timestamp", max_value={"$PARAMETER": "now"}, meta={"check": "no_future"}
        ),
        gxe.ExpectColumnPairValuesToBeEqual(column_A=EVENT_DATE_COLUMN, column_B=PARTITION_COLUMN),
        gxe.ExpectCompoundColumnsToBeUnique(
            column_list=["user_id", "item_id", "timestamp"],
            **_mostly(_setting(settings, "max_duplicate_rate")),
        ),
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
    ]
    if with_volume:
        expectations.append(
            gxe.ExpectTableRowCountToBeBetween(
                min_value={"$PARAMETER": "volume_min"},
                max_value={"$PARAMETER": "volume_max"},
                meta={"check": "volume_vs_trailing_mean"},
            )
        )
    if with_known_items:
        expectations.append(
            gxe.ExpectColumnValuesToBeInSet(
                column=ITEM_KNOWN_COLUMN,
                value_set=[True],
                meta={"check": "unknown_item_share"},
                **_mostly(_setting(settings, "max_unknown_item_share")),
            )
        )
    # Built in one go: add_expectation on a suite already in the store rewrites it each time.
    return gx.ExpectationSuite(name=SUITE_NAME, expectations=expectations)


def _feature_ranges(kind: str, settings: Settings) -> dict[str, tuple[float | None, float | None]]:
    """(min, max) per feature of a feature table; ``None`` = unbounded on that side.

    ``item_age_years`` has no range: release years come from optional item metadata.
    """
    if kind == "user":
        ranges: dict[str, tuple[float | None, float | None]] = {
            f: (0.0, None) for f in USER_FEATURES if f.startswith("user_cnt_")
        }
        ranges["user_mean_rating"] = (settings.rating_min, settings.rating_max)
        ranges["user_days_since_last"] = (0.0, None)
        ranges.update({f: (0.0, 1.0) for f in USER_AFFINITY})
        return ranges
    ranges = {f: (0.0, None) for f in ITEM_FEATURES if f.startswith("item_pop_")}
    ranges["item_mean_rating"] = (settings.rating_min, settings.rating_max)
    ranges.update({f: (0.0, 1.0) for f in ITEM_GENRES})
    return ranges


def _build_feature_suite(kind: str, settings: Settings) -> Any:
    """The ``{kind}_features`` suite: keys, per-feature null fraction and ranges."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    key, features = ("user_id", USER_FEATURES) if kind == "user" else ("item_id", ITEM_FEATURES)
    expectations = [
        gxe.ExpectTableColumnsToMatchSet(
            column_set=[key, "event_timestamp", *features], exact_match=False
        ),
        gxe.ExpectColumnValuesToNotBeNull(column=key),
        gxe.ExpectColumnValuesToNotBeNull(column="event_timestamp"),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=[key, "event_timestamp"]),
        gxe.ExpectColumnUniqueValueCountToBeBetween(column=key, min_value=1),
    ]
    null_share = _mostly(_setting(settings, "max_feature_null_fraction"))
    expectations += [gxe.ExpectColumnValuesToNotBeNull(column=f, **null_share) for f in features]
    expectations += [
        gxe.ExpectColumnValuesToBeBetween(column=f, min_value=low, max_value=high)
        for f, (low, high) in _feature_ranges(kind, settings).items()
    ]
    # Built in one go: add_expectation on a suite already in the store rewrites it each time.
    return gx.ExpectationSuite(name=f"{kind}_features", expectations=expectations)


def _build_training_suite(settings: Settings) -> Any:
    """The ``training_set`` suite: labels, query shape, feature nulls, positive share."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    derived = [QUERY_SIZE_COLUMN, QUERY_POSITIVES_COLUMN, IS_POSITIVE_COLUMN]
    expectations = [
        gxe.ExpectTableColumnsToMatchSet(
            column_set=[*MODEL_FEATURES, "label", *TRAINING_KEYS, *derived], exact_match=False
        ),
        *(gxe.ExpectColumnValuesToNotBeNull(column=c) for c in ["label", *TRAINING_KEYS]),
        gxe.ExpectColumnValuesToBeBetween(
            column="label", min_value=0, max_value=settings.rating_max
        ),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["query_id", "item_id"]),
        gxe.ExpectColumnValuesToBeBetween(
            column=QUERY_SIZE_COLUMN, min_value=2, meta={"check": "query_has_2_candidates"}
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column=QUERY_POSITIVES_COLUMN, min_value=1, meta={"check": "query_has_a_positive"}
        ),
        gxe.ExpectColumnMeanToBeBetween(
            column=IS_POSITIVE_COLUMN,
            min_value=float(_setting(settings, "min_positive_share")),
            max_value=float(_setting(settings, "max_positive_share")),
            meta={"check": "positive_label_share"},
        ),
        *_history_null_expectations(settings),
    ]
    # Built in one go: add_expectation on a suite already in the store rewrites it each time.
    return gx.ExpectationSuite(name=TRAINING_SUITE_NAME, expectations=expectations)


def _history_null_expectations(settings: Settings) -> list[Any]:
    """Each model feature not null where its entity has history (GE ``row_condition``).

    ``genre_match`` combines both entities, so it is checked where both have history.
    """
    import great_expectations.expectations as gxe

    history = {f: USER_HISTORY for f in USER_FEATURES} | {f: ITEM_HISTORY for f in ITEM_FEATURES}
    history["genre_match"] = f"{USER_HISTORY} and {ITEM_HISTORY}"
    expectations = []
    # als_score and content_sim are null where the user (or, for als_score, the item) is
    # newer than the factor snapshot its row joined (pipelines.factors), or the item has no
    # text: expected, and reported in null_shares.
    for feature in (f for f in MODEL_FEATURES if f not in SNAPSHOT_SCORES):
        share = (
            "max_training_null_fraction"
            if feature in METADATA_FEATURES
            else ("max_history_null_fraction")
        )
        expectations.append(
            gxe.ExpectColumnValuesToNotBeNull(
                column=feature,
                row_condition=history[feature],
                condition_parser="pandas",
                **_mostly(_setting(settings, share)),
            )
        )
    return expectations


def _context(settings: Settings) -> Any:
    """The File context under ``settings.gx_dir``, created on first use, progress bars off."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    settings.gx_dir.mkdir(parents=True, exist_ok=True)
    context = gx.get_context(mode="file", context_root_dir=settings.gx_dir)
    progress_bars = context.variables.progress_bars  # a dict once read back from gx.yml
    if progress_bars is None or progress_bars["globally"]:
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        context.variables.save()
    return context


def _suite_checkpoint(context: Any, suite: Any, datasource_name: str, asset_name: str) -> Any:
    """Get or create the data source, asset, validation and checkpoint of ``suite``.

    The suite itself is always replaced, so changed thresholds take effect on the next run.
    """
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction

    try:
        source = context.data_sources.get(datasource_name)
    except KeyError:
        source = context.data_sources.add_pandas(name=datasource_name)
    try:
        asset = source.get_asset(asset_name)
    except LookupError:
        asset = source.add_dataframe_asset(name=asset_name)
    try:
        batch_definition = asset.get_batch_definition(BATCH_DEFINITION_NAME)
    except KeyError:
        batch_definition = asset.add_batch_definition_whole_dataframe(BATCH_DEFINITION_NAME)

    suite = _save_suite(context, suite)
    validation = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=f"{suite.name}_validation", data=batch_definition, suite=suite)
    )
    return context.checkpoints.add_or_update(
        gx.Checkpoint(
            name=f"{suite.name}_checkpoint",
            validation_definitions=[validation],
            actions=[UpdateDataDocsAction(name="update_data_docs")],
            result_format={"result_format": "SUMMARY", "partial_unexpected_count": 5},
        )
    )


def _suite_fingerprint(suite: Any) -> list[str]:
    """The suite's expectations as comparable JSON, without their store-assigned ids."""
    configs = [e.configuration.to_json_dict() for e in suite.expectations]
    for config in configs:
        config.pop("id", None)
    return [json.dumps(c, sort_keys=True, default=str) for c in configs]


def _save_suite(context: Any, suite: Any) -> Any:
    """Store ``suite`` under its name, unless the stored one has the same expectations.

    ``suites.add_or_update`` matches every expectation against every stored one (over 1 s
    for the 60-expectation training suite), while an unchanged suite is the common case.
    """
    from great_expectations.exceptions import DataContextError

    try:
        stored = context.suites.get(name=suite.name)
    except DataContextError:
        return context.suites.add(suite)
    if _suite_fingerprint(stored) == _suite_fingerprint(suite):
        return stored
    return context.suites.add_or_update(suite)


def _checkpoint(settings: Settings, **suite_options: bool) -> tuple[Any, Any]:
    """The context and the ``raw_interactions`` checkpoint (see :func:`_build_suite`)."""
    context = _context(settings)
    suite = _build_suite(settings, **suite_options)
    return context, _suite_checkpoint(context, suite, DATASOURCE_NAME, ASSET_NAME)


def _failed_expectation(res: Any) -> dict[str, Any]:
    """The parts of a failed expectation result a person needs to act on it."""
    config = res.expectation_config
    kwargs = config.kwargs or {}
    column = kwargs.get("column") or kwargs.get("column_list")
    if "column_A" in kwargs:
        column = f"{kwargs['column_A']},{kwargs['column_B']}"
    elif isinstance(column, list):
        column = ",".join(column)
    result = res.result or {}
    out: dict[str, Any] = {
        "expectation": config.type,
        "column": column,
        "unexpected_count": result.get("unexpected_count"),
        "element_count": result.get("element_count"),
    }
    if (config.meta or {}).get("check"):
        out["check"] = config.meta["check"]
    condition = kwargs.get("row_condition")
    if condition:  # GE 1.x stores a pandas condition as {"pass_through_filter": ...}
        text = condition.get("pass_through_filter") if isinstance(condition, dict) else None
        out["row_condition"] = str(text or condition)
    if "observed_value" in result:
        out["observed_value"] = result["observed_value"]
    exception = _exception_message(res.exception_info or {})
    if exception:
        out["exception"] = exception
    return out


def _exception_message(info: dict) -> str | None:
    """The first error message; GE keys it by metric id when a metric could not be computed."""
    messages = [info.get("exception_message")]
    messages += [v.get("exception_message") for v in info.values() if isinstance(v, dict)]
    for message in messages:
        if message:
            return str(message).splitlines()[0].removeprefix("Error: ")[:200]
    return None


def _local_path(sites: Iterable[dict]) -> str | None:
    for site in sites:
        url = site.get("site_url") or ""
        if url.startswith("file://"):
            return str(Path(url.removeprefix("file://")).resolve())
    return None


def _docs_index(context: Any, gx_dir: Path) -> str:
    """Absolute path of the local Data Docs ``index.html``."""
    index = _local_path(context.get_docs_sites_urls())
    return index or str(
        (gx_dir / "uncommitted" / "data_docs" / "local_site" / "index.html").resolve()
    )


def with_vectorized_dtypes(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with narrow numbers widened to int64/float64 and naive timestamps in ns.

    GE's pandas ``column_values_between`` compares a column in one vectorized step only
    for those dtypes: any other (float32 features, timestamps in another unit) takes one
    Python call per value. The values are the same, exactly; the README has the cost.
    """
    casts = {}
    for name, dtype in frame.dtypes.items():
        if not isinstance(dtype, np.dtype) or dtype.itemsize == 8 and dtype.kind in "iuf":
            continue
        if dtype.kind == "f" or dtype.kind in "iu" and dtype.itemsize < 8:
            casts[name] = "float64" if dtype.kind == "f" else "int64"
        elif dtype.kind == "M" and dtype != np.dtype("datetime64[ns]"):
            casts[name] = "datetime64[ns]"
    # One block per dtype again (astype leaves a block per column), or GE's frame copies
    # re-merge the blocks at every metric.
    return frame.astype(casts).copy() if casts else frame


def _prune_results(context: Any, suite_name: str, keep: int) -> int:
    """Delete all but the newest ``keep - 1`` stored results of ``suite_name`` and their
    Data Docs pages, so that with the run about to start the suite has ``keep`` (``keep``
    <= 0: delete nothing). Returns how many were deleted. A run's own artifacts
    (``validation.json``, ``summary.json``) keep its result whatever is pruned here."""
    if keep <= 0:
        return 0
    store = context.validation_results_store
    keys = [k for k in store.list_keys() if k.expectation_suite_identifier.name == suite_name]
    old = sorted(keys, key=lambda k: k.run_id.run_time)[: max(len(keys) - (keep - 1), 0)]
    for key in old:
        page = _local_path(context.get_docs_sites_urls(resource_identifier=key))
        store.remove_key(key)
        if page:
            Path(page).unlink(missing_ok=True)
    return len(old)


def _run_suite(
    context: Any,
    checkpoint: Any,
    frame: pd.DataFrame,
    run_name: str,
    parameters: dict,
    settings: Settings,
) -> tuple[str, dict, str | None]:
    """Run ``checkpoint`` on ``frame``: suite name, suite summary, its Data Docs page. The
    suite's oldest stored results go first (``validation_results_kept``)."""
    import great_expectations as gx

    for definition in checkpoint.validation_definitions:
        _prune_results(
            context, definition.suite.name, int(_setting(settings, "validation_results_kept"))
        )
    checkpoint_result = checkpoint.run(
        batch_parameters={"dataframe": with_vectorized_dtypes(frame)},
        expectation_parameters=parameters,
        run_id=gx.RunIdentifier(run_name=run_name, run_time=datetime.now(UTC)),
    )
    ((identifier, suite_result),) = checkpoint_result.run_results.items()
    stats = suite_result.statistics
    summary = {
        "success": bool(checkpoint_result.success) and bool(suite_result.success),
        "evaluated": int(stats["evaluated_expectations"]),
        "successful": int(stats["successful_expectations"]),
        "failed_expectations": [
            _failed_expectation(r) for r in suite_result.results if not r.success
        ],
    }
    try:
        page = _local_path(context.get_docs_sites_urls(resource_identifier=identifier))
    except Exception:  # the page is a convenience; the index is always reported
        log.warning("no Data Docs page for %s", identifier, exc_info=True)
        page = None
    return suite_result.suite_name, summary, page


def _result(
    context: Any, settings: Settings, suite_name: str, summary: dict, page: str | None, **extra: Any
) -> dict:
    result = {
        "passed": summary["success"],
        "suites": {suite_name: summary},
        **extra,
        "data_docs": _docs_index(context, settings.gx_dir),
        "data_docs_page": page,
    }
    # Observed values may hold numpy scalars; round-trip so callers get plain JSON types.
    return json.loads(json.dumps(result, default=_to_json))


def validate_interactions(
    df: pd.DataFrame,
    *,
    partition_dates: list[date],
    settings: Settings,
    run_name: str,
    now: float | None = None,
    trailing_daily_rows: list[int] | None = None,
    known_item_ids: set[str] | None = None,
) -> dict:
    """Run the ``raw_interactions`` suite on ``df`` as one batch and build Data Docs.

    Always checked: columns, non-null fields, rating range, timestamps inside the batch's
    days and not after ``now`` (unix seconds, default: the current time), duplicate
    (user, item, timestamp) rows (GE counts every row of a duplicated key; at most
    ``max_duplicate_rate`` of them), at least one row.

    With ``trailing_daily_rows`` (row counts of up to 7 previous partitions; the caller reads
    them): rows per day of the batch (``rows / len(partition_dates)``) within
    ``volume_min_ratio``..``volume_max_ratio`` times their mean; skipped when that mean is 0.
    With ``known_item_ids``: at most ``max_unknown_item_share`` of rows have an item outside
    it (via a derived boolean ``item_known`` column).

    Returns a JSON-serialisable summary; bad data gives ``passed: False``, never an exception.
    """
    n_days = len(set(partition_dates))
    volume = None
    if trailing_daily_rows:
        volume = _volume_bounds(
            list(trailing_daily_rows),
            n_days,
            float(_setting(settings, "volume_min_ratio")),
            float(_setting(settings, "volume_max_ratio")),
        )
    with_known_items = bool(known_item_ids)

    context, checkpoint = _checkpoint(
        settings, with_volume=volume is not None, with_known_items=with_known_items
    )
    frame = _with_event_date(df)
    if with_known_items:
        frame = _with_item_known(frame, known_item_ids)
    ts_min, ts_max = _day_bounds(partition_dates)
    parameters: dict[str, Any] = {
        "timestamp_min": ts_min,
        "timestamp_max": ts_max,
        "now": int(wall_clock.time() if now is None else now),
    }
    if volume is not None:
        parameters["volume_min"], parameters["volume_max"] = volume
    suite_name, summary, page = _run_suite(
        context, checkpoint, frame, run_name, parameters, settings
    )
    return _result(
        context,
        settings,
        suite_name,
        summary,
        page,
        rows=len(df),
        partitions=[d.isoformat() for d in sorted(partition_dates)],
    )


def combine_results(results: list[dict]) -> dict:
    """One result for a batch validated in parts (see ``ingest.day_batches``).

    It passes only if every part passed. Counts add up per suite, every failed expectation
    is kept with the partitions it failed on, and ``parts`` lists each part's verdict.
    """
    if len(results) == 1:
        return results[0]
    suites: dict[str, dict] = {}
    for result in results:
        span = result.get("partitions", [])
        for name, summary in result["suites"].items():
            total = suites.setdefault(
                name, {"success": True, "evaluated": 0, "successful": 0, "failed_expectations": []}
            )
            total["success"] = total["success"] and summary["success"]
            total["evaluated"] += summary["evaluated"]
            total["successful"] += summary["successful"]
            total["failed_expectations"] += [
                {**failed, "partitions": f"{span[0]}..{span[-1]}" if span else None}
                for failed in summary["failed_expectations"]
            ]
    failed = [r for r in results if not r["passed"]]
    return {
        "passed": not failed,
        "suites": suites,
        "rows": sum(r.get("rows", 0) for r in results),
        "partitions": [d for r in results for d in r.get("partitions", [])],
        "parts": [
            {
                "partitions": [r["partitions"][0], r["partitions"][-1]],
                "rows": r.get("rows", 0),
                "passed": r["passed"],
                "data_docs_page": r.get("data_docs_page"),
            }
            for r in results
        ],
        "data_docs": results[-1]["data_docs"],
        "data_docs_page": (failed or results)[0].get("data_docs_page"),
    }


def _sample(frame: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """At most ``validation_sample_rows`` rows of ``frame``, drawn with ``settings.seed``."""
    limit = int(_setting(settings, "validation_sample_rows"))
    if limit <= 0 or len(frame) <= limit:
        return frame
    return frame.sample(n=limit, random_state=settings.seed)


def _validate_frame(
    frame: pd.DataFrame,
    sample: pd.DataFrame,
    *,
    build: Callable[[], Any],
    settings: Settings,
    run_name: str,
    **extra: Any,
) -> dict:
    context = _context(settings)
    suite = build()
    checkpoint = _suite_checkpoint(context, suite, FRAMES_DATASOURCE_NAME, f"{suite.name}_frame")
    suite_name, summary, page = _run_suite(context, checkpoint, sample, run_name, {}, settings)
    return _result(
        context,
        settings,
        suite_name,
        summary,
        page,
        rows=len(frame),
        validated_rows=len(sample),
        partitions=[],
        **extra,
    )


def validate_features(
    frame: pd.DataFrame, *, kind: Literal["user", "item"], settings: Settings, run_name: str
) -> dict:
    """Run the ``{kind}_features`` suite on one feature table (an offline Feast source).

    Checks: the key (``user_id``/``item_id``) and ``event_timestamp`` present and non-null,
    (key, event_timestamp) unique, at least one key; each feature column at most
    ``max_feature_null_fraction`` null; counts/popularity and ``user_days_since_last`` >= 0,
    mean ratings within [rating_min, rating_max], affinities and genre flags within [0, 1].

    A frame of more than ``validation_sample_rows`` rows is validated on a random sample of
    that many rows (seeded with ``settings.seed``): null fractions are then estimates and
    only duplicates that both land in the sample are seen. ``rows`` in the result is the
    frame's size, ``validated_rows`` the sample's.
    """
    if kind not in ("user", "item"):
        raise ValueError(f"kind must be 'user' or 'item', not {kind!r}")
    return _validate_frame(
        frame,
        _sample(frame, settings),
        build=lambda: _build_feature_suite(kind, settings),
        settings=settings,
        run_name=run_name,
    )


def _with_query_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Copy of ``frame`` plus per-row ``query_size``, ``query_positives`` and ``is_positive``.

    A positive is a candidate with ``label > 0``. Without ``query_id``/``label`` nothing is
    derived and the column-set expectation fails.
    """
    out = frame.copy()
    if "label" in out.columns:
        out[IS_POSITIVE_COLUMN] = pd.to_numeric(out["label"], errors="coerce").gt(0)
        if "query_id" in out.columns:
            by_query = out.groupby("query_id", dropna=False)[IS_POSITIVE_COLUMN]
            out[QUERY_SIZE_COLUMN] = by_query.transform("size").astype("int64")
            out[QUERY_POSITIVES_COLUMN] = by_query.transform("sum").astype("int64")
    return out


def _null_shares(frame: pd.DataFrame) -> dict[str, Any]:
    """Overall null share per model feature, and the share of rows without user/item history.

    Reported beside the suite: the suite itself only judges nulls where history exists.
    """
    present = [f for f in MODEL_FEATURES if f in frame.columns]
    shares = frame[present].isna().mean() if len(frame) else pd.Series(0.0, index=present)
    out: dict[str, Any] = {"null_shares": {f: round(float(v), 4) for f, v in shares.items()}}
    for kind, key in (("user", "user_cnt_all"), ("item", "item_pop_all")):
        if key in frame.columns and len(frame):
            out[f"{kind}_without_history_share"] = round(float(frame[key].isna().mean()), 4)
    return out


def validate_training_set(frame: pd.DataFrame, *, settings: Settings, run_name: str) -> dict:
    """Run the ``training_set`` suite on a joined training set (one row per candidate).

    Checks: required columns (MODEL_FEATURES, label, query/user/item ids, event_timestamp)
    non-null keys and labels, label within [0, rating_max], (query_id, item_id) unique,
    every query with >= 2 candidates and >= 1 positive (``label > 0``), and the share of
    positive rows within ``min_positive_share``..``max_positive_share``.

    Feature nulls are judged only where the entity has history before the query time:
    a user (item) without a feature row (``user_cnt_all`` / ``item_pop_all`` null: new, or
    quiet past the TTL) has every feature of its view null, and that is expected, as the
    model handles missing values. Where the user (item) has history, each of its features
    may be null in at most ``max_history_null_fraction`` of those rows (default 0); the
    features that also need optional item metadata (:data:`METADATA_FEATURES`) in at most
    ``max_training_null_fraction``. ``genre_match`` is judged where both have history;
    ``als_score`` and ``content_sim`` are only reported (:data:`SNAPSHOT_SCORES`: null
    wherever a side is newer than its factor snapshot).
    The result also reports each feature's overall null share (``null_shares``) and the
    shares of rows without user or item history, over the whole frame.

    The per-query columns are derived from the whole frame; a frame of more than
    ``validation_sample_rows`` rows is then validated on a seeded random sample of rows,
    so the query checks stay exact for the sampled rows while null fractions and the
    positive share are estimates.
    """
    derived = _with_query_columns(frame)
    return _validate_frame(
        frame,
        _sample(derived, settings),
        build=lambda: _build_training_suite(settings),
        settings=settings,
        run_name=run_name,
        **_null_shares(frame),
    )


def _to_json(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def quarantine_partition(
    partition_file: Path, logical_date: date, result: dict, settings: Settings
) -> Path:
    """Move a failed partition out of the lake to ``catalog.QUARANTINE``, with its validation
    result beside it (``catalog.QUARANTINE_VALIDATION``); returns the date's folder.

    The file is moved, never deleted, so it can be inspected and replayed. The latest
    quarantine of a date is at the top of its folder; an earlier one of the same date
    (a second bad delivery) is kept in ``earlier-<n>/`` beside it, never overwritten.
    """
    target = catalog.QUARANTINE.path(settings, date=logical_date)
    folder = target.parent
    folder.mkdir(parents=True, exist_ok=True)
    previous = [p for p in folder.iterdir() if p.is_file()]
    if previous:
        kept = folder / f"earlier-{len(list(folder.glob('earlier-*'))) + 1}"
        kept.mkdir()
        for path in previous:
            path.replace(kept / path.name)
    shutil.move(str(partition_file), target)
    catalog.QUARANTINE_VALIDATION.save(settings, result, date=logical_date)
    log.warning("quarantined %s to %s", partition_file, folder)
    return folder


def failure_message(result: dict) -> str:
    """One paragraph naming every failed expectation, its column and how many rows broke it."""
    parts = []
    for suite_name, suite in result.get("suites", {}).items():
        for failed in suite.get("failed_expectations", []):
            text = f"{failed['expectation']}"
            if failed.get("check"):
                text += f" [{failed['check']}]"
            if failed.get("column"):
                text += f" on {failed['column']}"
            if failed.get("row_condition"):
                text += f" where {failed['row_condition']}"
            if failed.get("partitions"):
                text += f" in {failed['partitions']}"
            if failed.get("unexpected_count") is not None:
                text += f" ({failed['unexpected_count']} of {failed.get('element_count')} rows)"
            elif failed.get("exception"):
                text += f" (error: {failed['exception']})"
            elif "observed_value" in failed:
                text += f" (observed {failed['observed_value']})"
            parts.append(f"{suite_name}: {text}")
    subject = ", ".join(result.get("partitions", []))
    subject = subject or ", ".join(result.get("suites", {})) or "no partition"
    detail = "; ".join(parts) or "no expectation details recorded"
    return (
        f"Validation failed for {subject} ({result.get('rows', 0)} rows): {detail}. "
        f"Data Docs: {result.get('data_docs_page') or result.get('data_docs', 'n/a')}"
    )
