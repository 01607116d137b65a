"""Validate raw interaction partitions with Great Expectations and quarantine the bad ones.

GE 1.x is imported inside the functions: it is slow to import and only this stage needs it.
Its checkpoint never raises on failed expectations, so callers must look at ``passed``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.config import Settings
from pipelines.contracts import INTERACTION_COLUMNS

SUITE_NAME = "raw_interactions"
DATASOURCE_NAME = "interactions"
ASSET_NAME = "raw_interactions_frame"
BATCH_DEFINITION_NAME = "whole_frame"
VALIDATION_NAME = "raw_interactions_validation"
CHECKPOINT_NAME = "raw_interactions_checkpoint"

PARTITION_COLUMN = "partition_date"
EVENT_DATE_COLUMN = "event_date"  # derived here from ``timestamp``, never read from upstream
EXPECTED_COLUMNS = [*INTERACTION_COLUMNS, PARTITION_COLUMN]

log = logging.getLogger(__name__)


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
        days = pd.to_datetime(seconds, unit="s", utc=True, errors="coerce").dt.strftime("%Y-%m-%d")
        out[EVENT_DATE_COLUMN] = days.astype(object).where(days.notna(), None)
    return out


def _build_suite(settings: Settings) -> Any:
    """The ``raw_interactions`` suite; the timestamp window comes from suite parameters."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    suite = gx.ExpectationSuite(name=SUITE_NAME)
    expectations = [
        gxe.ExpectTableColumnsToMatchSet(
            column_set=[*EXPECTED_COLUMNS, EVENT_DATE_COLUMN], exact_match=True
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
        gxe.ExpectColumnPairValuesToBeEqual(column_A=EVENT_DATE_COLUMN, column_B=PARTITION_COLUMN),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "item_id", "timestamp"]),
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
    ]
    for expectation in expectations:
        suite.add_expectation(expectation)
    return suite


def _checkpoint(settings: Settings) -> tuple[Any, Any]:
    """Get or create the File context, data source, suite, validation and checkpoint."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    settings.gx_dir.mkdir(parents=True, exist_ok=True)
    context = gx.get_context(mode="file", context_root_dir=settings.gx_dir)
    progress_bars = context.variables.progress_bars  # a dict once read back from gx.yml
    if progress_bars is None or progress_bars["globally"]:
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        context.variables.save()

    try:
        source = context.data_sources.get(DATASOURCE_NAME)
    except KeyError:
        source = context.data_sources.add_pandas(name=DATASOURCE_NAME)
    try:
        asset = source.get_asset(ASSET_NAME)
    except LookupError:
        asset = source.add_dataframe_asset(name=ASSET_NAME)
    try:
        batch_definition = asset.get_batch_definition(BATCH_DEFINITION_NAME)
    except KeyError:
        batch_definition = asset.add_batch_definition_whole_dataframe(BATCH_DEFINITION_NAME)

    suite = context.suites.add_or_update(_build_suite(settings))
    validation = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=VALIDATION_NAME, data=batch_definition, suite=suite)
    )
    checkpoint = context.checkpoints.add_or_update(
        gx.Checkpoint(
            name=CHECKPOINT_NAME,
            validation_definitions=[validation],
            actions=[UpdateDataDocsAction(name="update_data_docs")],
            result_format={"result_format": "SUMMARY", "partial_unexpected_count": 5},
        )
    )
    return context, checkpoint


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


def _docs_index(context: Any, gx_dir: Path) -> str:
    """Absolute path of the local Data Docs ``index.html``."""
    for site in context.get_docs_sites_urls():
        url = site.get("site_url") or ""
        if url.startswith("file://"):
            return str(Path(url.removeprefix("file://")).resolve())
    return str((gx_dir / "uncommitted" / "data_docs" / "local_site" / "index.html").resolve())


def validate_interactions(
    df: pd.DataFrame, *, partition_dates: list[date], settings: Settings, run_name: str
) -> dict:
    """Run the ``raw_interactions`` suite on ``df`` as one batch and build Data Docs.

    Returns a JSON-serialisable summary; bad data gives ``passed: False``, never an exception.
    """
    import great_expectations as gx

    context, checkpoint = _checkpoint(settings)
    ts_min, ts_max = _day_bounds(partition_dates)
    checkpoint_result = checkpoint.run(
        batch_parameters={"dataframe": _with_event_date(df)},
        expectation_parameters={"timestamp_min": ts_min, "timestamp_max": ts_max},
        run_id=gx.RunIdentifier(run_name=run_name, run_time=datetime.now(UTC)),
    )

    (suite_result,) = checkpoint_result.run_results.values()
    stats = suite_result.statistics
    suite_summary = {
        "success": bool(suite_result.success),
        "evaluated": int(stats["evaluated_expectations"]),
        "successful": int(stats["successful_expectations"]),
        "failed_expectations": [
            _failed_expectation(r) for r in suite_result.results if not r.success
        ],
    }
    result = {
        "passed": bool(checkpoint_result.success) and suite_summary["success"],
        "suites": {SUITE_NAME: suite_summary},
        "rows": len(df),
        "partitions": [d.isoformat() for d in sorted(partition_dates)],
        "data_docs": _docs_index(context, settings.gx_dir),
    }
    # Observed values may hold numpy scalars; round-trip so callers get plain JSON types.
    return json.loads(json.dumps(result, default=_to_json))


def _to_json(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def quarantine_partition(
    partition_file: Path, logical_date: date, result: dict, settings: Settings
) -> Path:
    """Move a failed partition out of the lake, with its validation result beside it.

    The file is moved, never deleted, so it can be inspected and replayed; files of an
    earlier quarantine of the same date are overwritten in place.
    """
    folder = settings.quarantine_dir / f"date={logical_date.isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.move(str(partition_file), folder / partition_file.name)
    (folder / "validation.json").write_text(json.dumps(result, indent=2, default=str))
    log.warning("quarantined %s to %s", partition_file, folder)
    return folder


def failure_message(result: dict) -> str:
    """One paragraph naming every failed expectation, its column and how many rows broke it."""
    parts = []
    for suite_name, suite in result.get("suites", {}).items():
        for failed in suite.get("failed_expectations", []):
            text = f"{failed['expectation']}"
            if failed.get("column"):
                text += f" on {failed['column']}"
            if failed.get("unexpected_count") is not None:
                text += f" ({failed['unexpected_count']} of {failed.get('element_count')} rows)"
            elif failed.get("exception"):
                text += f" (error: {failed['exception']})"
            elif "observed_value" in failed:
                text += f" (observed {failed['observed_value']})"
            parts.append(f"{suite_name}: {text}")
    partitions = ", ".join(result.get("partitions", [])) or "no partition"
    detail = "; ".join(parts) or "no expectation details recorded"
    return (
        f"Validation failed for {partitions} ({result.get('rows', 0)} rows): {detail}. "
        f"Data Docs: {result.get('data_docs', 'n/a')}"
    )
