"""A self-contained HTML report per DAG run, written into its run directory (``catalog.REPORT``).

It reads whatever the run's tasks left behind, through the catalog (any artifact may be
missing: a run that stopped at validation has little more than its ``catalog.VALIDATION``
verdict) and renders the sections it can. Figures are matplotlib PNGs embedded as base64,
so the file can be mailed or archived on its own.

    python -m pipelines.report .data/runs/2003-02-28
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import os
import re
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from pipelines import catalog, contracts  # noqa: E402

if TYPE_CHECKING:
    from pipelines.config import Settings

log = logging.getLogger(__name__)

METRICS = ("ndcg@10", "map@10", "recall@10")
# Display order and colours of the rankers, so every figure uses the same ones.
RANKERS = ("model", "production", "popularity", "random")
LABELS = {
    "model": "model (candidate)",
    "production": "production (champion)",
    "popularity": "popularity",
    "random": "random",
}
COLORS = {"model": "#1f77b4", "production": "#ff7f0e", "popularity": "#2ca02c", "random": "#999999"}
REGRESSION_COLOR = "#d62728"
TOP_FEATURES = 20

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1000px; color: #222; line-height: 1.4; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; margin-top: 1.8em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.7em; text-align: left; vertical-align: top; }
th { background: #f5f5f5; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.pass { color: #1a7f37; font-weight: bold; } .fail { color: #d62728; font-weight: bold; }
.muted { color: #777; } .badge { padding: 0.15em 0.6em; border-radius: 0.3em; color: #fff; }
.badge.pass { background: #1a7f37; } .badge.fail { background: #d62728; }
.badge.none { background: #777; } img { max-width: 100%; display: block; margin: 0.5em 0; }
tr.regression td { background: #fdecea; } code { background: #f5f5f5; padding: 0 0.2em; }
"""

Inputs = dict[str, Any]


# --- small helpers ------------------------------------------------------------------------


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, digits: int = 4) -> str:
    """Numbers rounded, ``None`` as a dash, anything else as text (escaped)."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        small = value != 0 and abs(value) < 10.0**-digits
        return f"{value:.3g}" if small or not np.isfinite(value) else f"{value:.{digits}f}"
    return _esc(value)


def _table(
    header: list[str],
    rows: list[list[Any]],
    row_classes: list[str] | None = None,
    digits: int = 4,
) -> str:
    """An HTML table; numeric cells are right-aligned. Cells are escaped unless pre-rendered."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    head = f"<thead><tr>{head}</tr></thead>" if any(header) else ""
    body = []
    for i, row in enumerate(rows):
        cells = []
        for cell in row:
            if isinstance(cell, _Raw):
                cells.append(f"<td>{cell}</td>")
            elif isinstance(cell, int | float) and not isinstance(cell, bool):
                cells.append(f'<td class="num">{_fmt(cell, digits)}</td>')
            else:
                cells.append(f"<td>{_fmt(cell)}</td>")
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return f"<table>{head}<tbody>{''.join(body)}</tbody></table>"


class _Raw(str):
    """Already-rendered HTML for a table cell."""


def _status(passed: bool | None, yes: str = "passed", no: str = "failed") -> _Raw:
    if passed is None:
        return _Raw('<span class="muted">n/a</span>')
    return _Raw(f'<span class="{"pass" if passed else "fail"}">{yes if passed else no}</span>')


def _png(fig: Figure) -> str:
    """The figure as an inline ``<img>`` (base64 PNG)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="figure" src="data:image/png;base64,{data}">'


def _count(value: float | None) -> int | None:
    """A count from a metrics dict (the catalog's model reads every metric as a float)."""
    return None if value is None else int(value)


# The run's JSON artifacts the report reads, by their key in ``Inputs``.
ARTIFACTS: dict[str, catalog.Entry] = {
    "evaluation": catalog.EVALUATION,
    "gate": catalog.GATE,
    "validation": catalog.VALIDATION,
    "timings": catalog.TIMINGS,
    "summary": catalog.SUMMARY,
    "promotion": catalog.PROMOTION,
    "register": catalog.REGISTRATION,
    "infra_validation": catalog.INFRA_VALIDATION,
}


def _run(base: Settings | Path, logical_date: date | str | None) -> tuple[Settings | Path, date]:
    """The data directory (or settings) and logical date of a run; without a date, ``base``
    is the run directory itself (``<data dir>/runs/<date>``)."""
    if logical_date is not None:
        return base, catalog.as_date(logical_date)
    run_dir = Path(base)
    day = catalog.as_date(run_dir.name)
    data_dir = run_dir.parents[catalog.RUN.count("/")]
    if catalog.REPORT.path(data_dir, date=day).parent != run_dir:
        raise ValueError(f"{run_dir} is not a run directory (<data dir>/{catalog.RUN})")
    return data_dir, day


def _load(base: Settings | Path, day: date) -> Inputs:
    """Every input the report can use (JSON artifacts as their catalog models); a missing one
    is ``None``. The booster and the holdout load lazily, in the sections that use them."""
    inputs: Inputs = {name: entry.load_or_none(base, date=day) for name, entry in ARTIFACTS.items()}
    per_query = catalog.PER_QUERY.path(base, date=day)
    inputs["per_query"] = pd.read_parquet(per_query) if per_query.exists() else None
    inputs["candidate"] = catalog.CANDIDATE.path(base, date=day)
    inputs["holdout"] = catalog.HOLDOUT.path(base, date=day)
    inputs["logical_date"] = day
    inputs["folder"] = catalog.REPORT.path(base, date=day).parent  # where the report goes
    inputs["history"] = _history(base, day)
    inputs["training_set"] = catalog.TRAINING_SET_FACTS.load_or_none(base, date=day)
    inputs["refit"] = catalog.REFIT.load_or_none(base, date=day)
    return inputs


def _history(base: Settings | Path, day: date) -> pd.DataFrame:
    """NDCG@10 of every run up to ``day`` that evaluated: one row per logical date."""
    rows = []
    for run in catalog.EVALUATION.dates(base):
        if run > day:
            continue
        metrics = catalog.EVALUATION.load(base, date=run).metrics
        promotion = catalog.PROMOTION.load_or_none(base, date=run)
        row = {r: (metrics.get(r) or {}).get("ndcg@10") for r in RANKERS}
        rows.append({"date": run, **row, "promoted": promotion.promoted if promotion else None})
    return pd.DataFrame(rows, columns=["date", *RANKERS, "promoted"])


def _rankers(metrics: dict[str, Any]) -> list[str]:
    """Rankers with metrics, in display order (a missing champion is skipped)."""
    known = [r for r in RANKERS if metrics.get(r)]
    return known + sorted(r for r, m in metrics.items() if m and r not in RANKERS)


def _color(ranker: str) -> str:
    return COLORS.get(ranker, "#9467bd")


# --- sections: each returns HTML, or None when its inputs are missing -------------------


def _header(inputs: Inputs) -> str:
    """Logical date, the promotion (or gate) decision and its reason, and the gate checks."""
    day = inputs["logical_date"].isoformat()
    promotion: catalog.Promotion | None = inputs["promotion"]
    gate: catalog.GateDecision | None = inputs["gate"]
    validation: catalog.ValidationResult | None = inputs["validation"]
    if promotion is not None:
        badge = ("pass", "promoted") if promotion.promoted else ("fail", "not promoted")
        reason = promotion.reason
    elif gate is not None:
        badge = ("pass", "gate passed") if gate.passed else ("fail", "gate failed")
        reason = gate.reason
    elif validation is not None and not validation.passed:
        badge, reason = ("fail", "stopped: validation failed"), _validation_reason(validation)
    else:
        badge, reason = ("none", "incomplete run"), "no gate decision was recorded"
    facts = []
    summary: catalog.Summary | None = inputs["summary"]
    if summary is not None and summary.run_id:
        facts.append(("run id", summary.run_id))
    register: catalog.Registration | None = inputs["register"]
    if register is not None:
        evaluated = register.evaluated_tag or register.model_tag
        facts.append(("candidate (evaluated)", evaluated))
        if register.model_tag != evaluated:
            facts.append(("served (refit through the logical date)", register.model_tag))
    if inputs["evaluation"] is not None:
        facts.append(("champion", inputs["evaluation"].production_tag or "none yet"))
    if promotion is not None and promotion.production_tag:
        facts.append(("production after this run", promotion.production_tag))
    if gate is not None and promotion is not None:
        facts.append(("gate", "passed" if gate.passed else "failed"))
    infra: catalog.InfraValidation | None = inputs["infra_validation"]
    if infra is not None:
        state = "skipped" if infra.skipped else ("passed" if infra.passed else "failed")
        facts.append(("infra-validation", f"{state}: {infra.reason or ''}"))
    parts = [
        f"<h1>Run report &mdash; {_esc(day)}</h1>",
        f'<p>Logical date <b>{_esc(day)}</b> &nbsp; <span class="badge {badge[0]}">'
        f"{_esc(badge[1])}</span></p>",
        f"<p><b>Reason:</b> {_esc(reason or '–')}</p>",
    ]
    if facts:
        parts.append(_table(["", ""], [[k, v] for k, v in facts]))
    if gate is not None and gate.checks:
        rows = [[c.get("check"), _status(c.get("passed")), c.get("detail")] for c in gate.checks]
        parts.append("<h3>Gate checks</h3>" + _table(["check", "result", "detail"], rows))
    return "\n".join(parts)


def _validation_reason(validation: catalog.ValidationResult) -> str:
    """One line naming the failed expectations, for the header of a run that stopped early."""
    failed = [
        f"{f.get('expectation')}" + (f" on {f['column']}" if f.get("column") else "")
        for suite in validation.suites.values()
        for f in suite.failed_expectations
    ]
    return "raw data broke its contract: " + ("; ".join(failed) or "no details recorded")


def _metrics_section(inputs: Inputs) -> str | None:
    """Mean metrics of the candidate, the champion and the baselines: table and grouped bars."""
    evaluation: catalog.Evaluation | None = inputs["evaluation"]
    if evaluation is None or not evaluation.metrics:
        return None
    metrics = evaluation.metrics
    rankers = _rankers(metrics)
    rows = [
        [LABELS.get(r, r), *(metrics[r].get(m) for m in METRICS), _count(metrics[r].get("queries"))]
        for r in rankers
    ]
    table = _table(["ranker", *METRICS, "queries"], rows)
    note = "" if metrics.get("production") else '<p class="muted">No champion yet.</p>'

    fig = Figure(figsize=(8, 3.8))
    ax = fig.subplots()
    width = 0.8 / max(len(rankers), 1)
    x = np.arange(len(METRICS))
    for i, ranker in enumerate(rankers):
        values = [metrics[ranker].get(m) or 0.0 for m in METRICS]
        bars = ax.bar(
            x + (i - (len(rankers) - 1) / 2) * width,
            values,
            width,
            label=LABELS.get(ranker, ranker),
            color=_color(ranker),
        )
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
    ax.set_xticks(x, [m.upper() for m in METRICS])
    ax.set_ylabel("mean over holdout queries")
    ax.set_ylim(0, min(1.05, max(ax.get_ylim()[1] * 1.1, 0.1)))
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("Holdout metrics")
    return f"<h2>Metrics</h2>{table}{note}{_png(fig)}"


def _slices_section(inputs: Inputs) -> str | None:
    """Model vs the gate's reference ranker on each slice; regressions in red."""
    gate: catalog.GateDecision | None = inputs["gate"]
    if gate is None or not gate.slices:
        return None
    rows = gate.slices
    fixed = {"slice", "queries", "model", "regression"}
    reference = next((k for k in rows[0] if k not in fixed), "reference")
    header = ["slice", "queries", "model", reference, "model − ref", "regression"]
    table_rows, classes = [], []
    for row in rows:
        model, ref = row.get("model"), row.get(reference)
        diff = model - ref if model is not None and ref is not None else None
        table_rows.append(
            [
                row["slice"],
                row.get("queries"),
                model,
                ref,
                diff,
                _status(not row["regression"], "no", "YES"),
            ]
        )
        classes.append("regression" if row.get("regression") else "")
    table = _table(header, table_rows, classes)

    fig = Figure(figsize=(8, 3.8))
    ax = fig.subplots()
    x = np.arange(len(rows))
    model_vals = [r.get("model") or 0.0 for r in rows]
    ref_vals = [r.get(reference) or 0.0 for r in rows]
    ax.bar(x - 0.2, model_vals, 0.4, label=LABELS["model"], color=_color("model"))
    ax.bar(x + 0.2, ref_vals, 0.4, label=LABELS.get(reference, reference), color=_color(reference))
    for i, row in enumerate(rows):
        if row.get("regression"):
            ax.axvspan(i - 0.5, i + 0.5, color=REGRESSION_COLOR, alpha=0.15, lw=0)
        top = max(model_vals[i], ref_vals[i])
        label = f"n={row['queries']}" if row.get("queries") else "no queries"
        ax.text(i, top + 0.01, label, ha="center", fontsize=7)
    ax.set_xticks(x, [r["slice"] for r in rows], rotation=20, ha="right")
    for tick, row in zip(ax.get_xticklabels(), rows, strict=True):
        if row.get("regression"):
            tick.set_color(REGRESSION_COLOR)
    ax.set_ylabel("NDCG@10")
    ax.set_ylim(0, min(1.05, max(model_vals + ref_vals + [0.1]) * 1.2))
    ax.legend(fontsize=8)
    ax.set_title(f"NDCG@10 per slice (model vs {reference}; regressions shaded red)")
    regressions = [r["slice"] for r in rows if r.get("regression")]
    note = (
        f'<p class="fail">Regressing slices: {_esc(", ".join(regressions))}</p>'
        if regressions
        else '<p class="muted">No slice regresses.</p>'
    )
    return f"<h2>Slices</h2>{note}{table}{_png(fig)}"


def _per_query_section(inputs: Inputs) -> str | None:
    """The spread of NDCG@10 over queries for each ranker: box plots and histograms."""
    frame = inputs["per_query"]
    if frame is None:
        return None
    rankers = [r for r in RANKERS if r in frame.columns and frame[r].notna().any()]
    if not rankers:
        return None
    data = [frame[r].dropna().to_numpy(dtype=float) for r in rankers]
    fig = Figure(figsize=(10, 3.8))
    box_ax, hist_ax = fig.subplots(1, 2)
    box = box_ax.boxplot(
        data, showmeans=True, patch_artist=True, widths=0.6, medianprops={"color": "black"}
    )
    for patch, ranker in zip(box["boxes"], rankers, strict=True):
        patch.set_facecolor(_color(ranker))
        patch.set_alpha(0.6)
    box_ax.set_xticks(range(1, len(rankers) + 1), rankers)
    box_ax.set_ylabel("NDCG@10 per query")
    box_ax.set_title("Per-query NDCG@10 (triangle = mean)")
    bins = np.linspace(0, 1, 21)
    for ranker, values in zip(rankers, data, strict=True):
        style = "--" if ranker == "production" else "-"  # often overlaps the candidate
        hist_ax.hist(
            values, bins=bins, histtype="step", lw=1.8, ls=style, color=_color(ranker), label=ranker
        )
    hist_ax.set_xlabel("NDCG@10")
    hist_ax.set_ylabel("queries")
    hist_ax.legend(fontsize=8)
    hist_ax.set_title("Histogram")
    rows = [
        [
            LABELS.get(r, r),
            len(v),
            float(np.mean(v)),
            float(np.median(v)),
            float(np.mean(v == 0)),
        ]
        for r, v in zip(rankers, data, strict=True)
    ]
    table = _table(["ranker", "queries", "mean", "median", "share of queries at 0"], rows)
    return f"<h2>Per-query NDCG@10</h2>{table}{_png(fig)}"


def _feature_name(name: str) -> str:
    """``f12`` -> the 13th model feature, when the booster was saved without names."""
    match = re.fullmatch(r"f(\d+)", name)
    if match and int(match.group(1)) < len(contracts.MODEL_FEATURES):
        return contracts.MODEL_FEATURES[int(match.group(1))]
    return name


def _booster(inputs: Inputs) -> Any:
    """The candidate booster, loaded on first use."""
    if "booster" not in inputs:
        import xgboost

        booster = xgboost.Booster()
        booster.load_model(inputs["candidate"])
        inputs["booster"] = booster
    return inputs["booster"]


def _importance_section(inputs: Inputs) -> str | None:
    """Top features of the candidate by total gain."""
    if not inputs["candidate"].exists():
        return None
    booster = _booster(inputs)
    gains = {
        _feature_name(k): float(v) for k, v in booster.get_score(importance_type="gain").items()
    }
    if not gains:
        return '<h2>Feature importance</h2><p class="muted">The model has no splits.</p>'
    top = sorted(gains.items(), key=lambda kv: kv[1], reverse=True)[:TOP_FEATURES]
    names, values = [k for k, _ in top][::-1], [v for _, v in top][::-1]
    fig = Figure(figsize=(8, 0.28 * len(top) + 1.2))
    ax = fig.subplots()
    ax.barh(names, values, color=_color("model"))
    ax.set_xlabel("average gain per split")
    ax.tick_params(axis="y", labelsize=8)
    ax.set_title(f"Top {len(top)} features by gain ({len(gains)} used of {booster.num_features()})")
    unused = [f for f in contracts.MODEL_FEATURES if f not in gains]
    note = (
        f'<p class="muted">Never split on ({len(unused)}): {_esc(", ".join(unused))}</p>'
        if unused and len(unused) < len(contracts.MODEL_FEATURES)
        else ""
    )
    return f"<h2>Feature importance</h2>{_png(fig)}{note}"


def _scores_section(inputs: Inputs) -> str | None:
    """The candidate's scores on the holdout, relevant (label > 0) vs non-relevant rows."""
    if not inputs["candidate"].exists() or not inputs["holdout"].exists():
        return None
    from pipelines import scoring

    booster = _booster(inputs)
    holdout = pd.read_parquet(inputs["holdout"])
    scores = scoring.score(booster, scoring.to_matrix(holdout))
    relevant = holdout["label"].to_numpy(dtype=float) > 0
    pos, neg = scores[relevant], scores[~relevant]
    fig = Figure(figsize=(8, 3.6))
    ax = fig.subplots()
    if len(scores):
        bins = np.linspace(float(np.nanmin(scores)), float(np.nanmax(scores)) + 1e-9, 41)
        for values, label, color in (
            (neg, "non-relevant", "#999999"),
            (pos, "relevant", "#1f77b4"),
        ):
            if len(values):
                ax.hist(values, bins=bins, density=True, alpha=0.55, color=color, label=label)
    ax.set_xlabel("candidate score")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax.set_title("Holdout score distribution by relevance")
    rows = [
        [name, len(v), *(float(f(v)) if len(v) else None for f in (np.mean, np.median, np.std))]
        for name, v in (("relevant (label > 0)", pos), ("non-relevant", neg))
    ]
    table = _table(["rows", "count", "mean", "median", "std"], rows)
    auc = _pairwise_auc(pos, neg)
    note = (
        f"<p>Chance that a relevant row outscores a non-relevant one (global AUC, across "
        f"queries): <b>{auc:.3f}</b></p>"
        if auc is not None
        else ""
    )
    return f"<h2>Score distributions</h2>{table}{note}{_png(fig)}"


def _pairwise_auc(pos: np.ndarray, neg: np.ndarray) -> float | None:
    """Mann-Whitney AUC from ranks (ties count half)."""
    if not len(pos) or not len(neg):
        return None
    ranks = pd.Series(np.concatenate([pos, neg])).rank().to_numpy()
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def _significance_section(inputs: Inputs) -> str | None:
    """The paired comparison with the champion: bootstrap bounds, Wilcoxon, per-query diffs."""
    gate: catalog.GateDecision | None = inputs["gate"]
    frame = inputs["per_query"]
    if gate is None:
        return None
    significance = gate.significance
    if not significance:
        return (
            "<h2>Champion/challenger significance</h2>"
            '<p class="muted">No champion to compare with: significance was not tested.</p>'
        )
    labels = {
        "queries": "paired queries",
        "mean_diff": "mean NDCG@10 difference (model − production)",
        "lower_95": "bootstrap 5th percentile",
        "upper_95": "bootstrap 95th percentile (one-sided upper bound)",
        "wilcoxon_p_less": "Wilcoxon p (model < production)",
        "significantly_worse": "significantly worse",
    }
    rows = [[labels.get(k, k), v] for k, v in significance.items()]
    verdict = significance.get("significantly_worse")
    parts = [
        "<h2>Champion/challenger significance</h2>",
        f"<p>Verdict: {_status(not verdict, 'not significantly worse', 'significantly worse')}</p>",
        _table(["statistic", "value"], rows),
    ]
    if frame is not None and {"model", "production"} <= set(frame.columns):
        diff = (frame["model"] - frame["production"]).dropna().to_numpy(dtype=float)
        fig = Figure(figsize=(8, 3.4))
        ax = fig.subplots()
        ax.hist(diff, bins=41, color=_color("model"), alpha=0.8)
        low, high = significance.get("lower_95"), significance.get("upper_95")
        if low is not None and high is not None:
            ax.axvspan(low, high, color="#ff7f0e", alpha=0.25, label="bootstrap 5-95% of mean")
        ax.axvline(0, color="black", lw=1)
        ax.axvline(
            float(diff.mean()) if len(diff) else 0.0,
            color=REGRESSION_COLOR,
            ls="--",
            lw=1.2,
            label="mean",
        )
        ax.set_xlabel("per-query NDCG@10, model − production")
        ax.set_ylabel("queries")
        ax.legend(fontsize=8)
        wins, losses = int((diff > 0).sum()), int((diff < 0).sum())
        ax.set_title(
            f"Per-query differences: {wins} better, {losses} worse, {len(diff) - wins - losses} tied"
        )
        parts.append(_png(fig))
    return "\n".join(parts)


def _docs_link(path_text: str, folder: Path) -> str:
    """A ``file://`` link to the Data Docs, and the path relative to the report's ``folder``."""
    path = Path(path_text)
    if not path.is_absolute():
        return f'<a href="{_esc(path_text)}">{_esc(path_text)}</a>'
    relative = os.path.relpath(path, folder.resolve())
    return (
        f'<a href="{_esc(path.as_uri())}">{_esc(path.as_uri())}</a> '
        f'(relative: <a href="{_esc(relative)}">{_esc(relative)}</a>)'
    )


def _validation_section(inputs: Inputs) -> str | None:
    """Each suite's result, its failed expectations, and the Data Docs link."""
    validation: catalog.ValidationResult | None = inputs["validation"]
    if validation is None:
        return None
    partitions = validation.partitions
    span = f"{partitions[0]} … {partitions[-1]}" if len(partitions) > 1 else "".join(partitions)
    parts = [
        "<h2>Data validation</h2>",
        f"<p>Overall: {_status(validation.passed)} &nbsp; rows: "
        f"{_fmt(validation.rows)} &nbsp; partitions: {len(partitions)} "
        f"({_esc(span or '–')})</p>",
    ]
    suites = validation.suites
    rows = [
        [name, _status(s.success), s.evaluated, s.successful, len(s.failed_expectations)]
        for name, s in suites.items()
    ]
    if rows:
        parts.append(_table(["suite", "result", "evaluated", "successful", "failed"], rows))
    failed = [(name, f) for name, s in suites.items() for f in s.failed_expectations]
    if failed:
        frows = [
            [
                name,
                f.get("expectation"),
                f.get("column"),
                f.get("unexpected_count"),
                f.get("element_count"),
                json.dumps(f["observed_value"], default=str) if "observed_value" in f else None,
                f.get("exception"),
            ]
            for name, f in failed
        ]
        header = [
            "suite",
            "failed expectation",
            "column",
            "unexpected",
            "of rows",
            "observed",
            "error",
        ]
        parts.append("<h3>Failed expectations</h3>" + _table(header, frows))
    if validation.data_docs:
        parts.append(f"<p>Data Docs: {_docs_link(validation.data_docs, inputs['folder'])}</p>")
    return "\n".join(parts)


def _history_section(inputs: Inputs) -> str | None:
    """NDCG@10 across runs: the candidate of each run, the champion it met and popularity."""
    history: pd.DataFrame = inputs["history"]
    if history.empty:
        return None
    rows = [
        [r.date.isoformat(), r.model, r.production, r.popularity, _status(r.promoted, "yes", "no")]
        for r in history.itertuples()
    ]
    table = _table(["run", "model", "production", "popularity", "promoted"], rows)
    fig = Figure(figsize=(8, 3.2))
    ax = fig.subplots()
    for ranker in ("model", "production", "popularity"):
        values = history[ranker].astype(float)
        if values.notna().any():
            ax.plot(history["date"], values, marker="o", label=LABELS[ranker], color=_color(ranker))
    ax.set_ylabel("NDCG@10")
    ax.legend(fontsize=8)
    ax.set_title("Holdout NDCG@10 by run")
    fig.autofmt_xdate()
    return f"<h2>NDCG@10 history</h2>{table}{_png(fig)}"


def _ablation_section(inputs: Inputs) -> str | None:
    """What each signal adds on its own: the candidate against the same configuration
    retrained without that signal's inputs, on the same holdout queries."""
    evaluation: catalog.Evaluation | None = inputs["evaluation"]
    if evaluation is None or not evaluation.ablation:
        return None
    model = (evaluation.metrics.get("model") or {}).get("ndcg@10")
    rows: list[list[Any]] = [["all signals (the candidate)", "–", model, "–"]]
    rows += [
        [f"without {signal}", ", ".join(a.features), a.ndcg_at_10, f"{a.lift:+.4f}"]
        for signal, a in evaluation.ablation.items()
    ]
    note = (
        '<p class="muted">Each row is the candidate\'s configuration trained again with the '
        "listed inputs missing, scored on the same holdout queries; lift = the candidate's "
        "NDCG@10 minus that row's.</p>"
    )
    return f"<h2>Signal ablation</h2>{_table(['model', 'inputs removed', 'NDCG@10', 'lift'], rows)}{note}"


def _model_card_section(inputs: Inputs) -> str | None:
    """What the served model is for, what it learnt from, how it scored, where it is weak."""
    summary: catalog.Summary | None = inputs["summary"]
    evaluation: catalog.Evaluation | None = inputs["evaluation"]
    facts: catalog.TrainingSetFacts | None = inputs["training_set"]
    if evaluation is None or facts is None:
        return None
    dataset = summary.dataset.get("name", "?") if summary is not None else "?"
    refit: catalog.Refit | None = inputs["refit"]
    metrics = evaluation.metrics
    model, popularity = (metrics.get(r) or {} for r in ("model", "popularity"))
    lift = (
        f"{model['ndcg@10'] / popularity['ndcg@10']:.2f}× popularity"
        if model.get("ndcg@10") and popularity.get("ndcg@10")
        else "–"
    )
    span = facts.partitions or {}
    served = (
        f"refit on {refit.queries} queries from {refit.first_day} to {refit.last_day}"
        if refit is not None and refit.refit
        else "the evaluated candidate itself (no refit)"
    )
    gate: catalog.GateDecision | None = inputs["gate"]
    slices = ", ".join(r["slice"] for r in (gate.slices or [])) if gate else ""
    rows = [
        [
            "intended use",
            "ranking a request's candidate items (up to a few hundred) for a "
            "user of the feed, by predicted graded engagement; not retrieval, not a policy",
        ],
        [
            "data",
            f"{dataset}: lake partitions {span.get('first', '?')} "
            f"to {span.get('last', '?')} ({span.get('count', '?')}); negatives "
            f"{facts.negatives}",
        ],
        [
            "evaluated on",
            f"{facts.holdout_queries} holdout queries of the last days before the "
            f"logical date; trained on {facts.train_queries} queries before them",
        ],
        ["served model", served],
        [
            "metrics",
            f"NDCG@10 {_fmt(model.get('ndcg@10'))} ({lift}); "
            f"MAP@10 {_fmt(model.get('map@10'))}; Recall@10 {_fmt(model.get('recall@10'))}",
        ],
        ["slices", slices or "none reported"],
        [
            "known limits",
            "features are counts, mean ratings, genre flags, ages and an ALS (collaborative) "
            "score; no content signal from titles yet; users and items newer than the last "
            "factor snapshot have no collaborative score, and those without history get "
            "nulls and rank mostly by item popularity; the refit has no holdout of its own, so its "
            "evidence is the evaluated candidate's; with the online store down, /rank falls "
            "back to popularity",
        ],
    ]
    return f"<h2>Model card</h2>{_table(['', ''], rows)}"


def _timings_section(inputs: Inputs) -> str | None:
    """Wall time of each task, in DAG order as recorded."""
    timings = inputs["timings"].root if inputs["timings"] is not None else {}
    if not timings:
        return None
    total = sum(float(v) for v in timings.values()) or 1.0
    rows: list[list[Any]] = [
        [task, round(float(s), 2), f"{100 * float(s) / total:.1f}%"] for task, s in timings.items()
    ]
    rows.append([_Raw("<b>total</b>"), round(total, 2), "100%"])
    return f"<h2>Timings</h2>{_table(['task', 'seconds', 'share'], rows, digits=2)}"


SECTIONS: list[tuple[str, Callable[[Inputs], str | None]]] = [
    ("Model card", _model_card_section),
    ("Metrics", _metrics_section),
    ("Signal ablation", _ablation_section),
    ("NDCG@10 history", _history_section),
    ("Slices", _slices_section),
    ("Per-query NDCG@10", _per_query_section),
    ("Champion/challenger significance", _significance_section),
    ("Feature importance", _importance_section),
    ("Score distributions", _scores_section),
    ("Data validation", _validation_section),
    ("Timings", _timings_section),
]


def render_report(base: Settings | Path, logical_date: date | str | None = None) -> str:
    """The report's HTML for the run of ``logical_date`` under ``base`` (the settings or the
    data directory); without a date, ``base`` is the run directory. A section whose inputs
    are missing is listed as skipped; one that fails shows its error instead of failing the
    whole report. An artifact that does not match its catalog model fails the report."""
    base, day = _run(base, logical_date)
    inputs = _load(base, day)
    body = [_header(inputs)]
    skipped = []
    for title, build in SECTIONS:
        try:
            section = build(inputs)
        except Exception as exc:  # a broken input must not hide the rest of the report
            log.exception("report section %r failed for %s", title, inputs["folder"])
            section = (
                f'<h2>{_esc(title)}</h2><p class="fail">Could not render: {_esc(repr(exc))}</p>'
            )
        if section is None:
            skipped.append(title)
        else:
            body.append(section)
    if skipped:
        body.append(
            f'<p class="muted">Not available for this run (inputs missing): '
            f"{_esc(', '.join(skipped))}.</p>"
        )
    title = f"Run report {day.isoformat()}"
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_esc(title)}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def write_report(base: Settings | Path, logical_date: date | str | None = None) -> Path:
    """Write the run's ``catalog.REPORT`` (atomically) and return its path. ``base`` is the
    settings or the data directory and ``logical_date`` the run's; without a date, ``base``
    is the run directory (``<data dir>/runs/<date>``)."""
    base, day = _run(base, logical_date)
    return catalog.atomic_write(catalog.REPORT.path(base, date=day), render_report(base, day))


if __name__ == "__main__":
    for arg in sys.argv[1:] or ["."]:  # run directories
        print(write_report(Path(arg).resolve()))
