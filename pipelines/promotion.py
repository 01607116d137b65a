"""The promotion gate: a candidate ships only if it passes every check."""

from __future__ import annotations

import numpy as np
import pandas as pd


def gate(
    metrics: dict[str, dict | None],
    tolerance: float,
    metric: str = "ndcg@10",
    significance: dict | None = None,
    slices: list[dict] | None = None,
    extra_checks: list[dict] | None = None,
) -> dict:
    """Pass iff every check passes:

    - the candidate beats popularity;
    - it trails production by at most ``tolerance`` on the mean;
    - it is not significantly worse than production per query (``significance``,
      from :func:`paired_bootstrap`), when given;
    - no slice regresses (``slices``, from :func:`slice_report`), when given;
    - every ``extra_checks`` entry passed (skew and drift, from pipelines.monitoring).
    """
    model = metrics["model"][metric]
    popularity = metrics["popularity"][metric]
    checks = [
        {
            "check": f"model {metric} > popularity {metric}",
            "passed": model > popularity,
            "detail": f"{model:.4f} vs {popularity:.4f}",
        }
    ]
    production = metrics.get("production")
    if production is not None:
        checks.append(
            {
                "check": f"model {metric} >= production {metric} - {tolerance}",
                "passed": model >= production[metric] - tolerance,
                "detail": f"{model:.4f} vs {production[metric]:.4f}",
            }
        )
    if significance is not None:
        checks.append(
            {
                "check": "not significantly worse than production (paired bootstrap, 95%)",
                "passed": not significance["significantly_worse"],
                "detail": f"mean diff {significance['mean_diff']:+.4f}, "
                f"upper bound {significance['upper_95']:+.4f} over {significance['queries']} queries",
            }
        )
    for row in [r for r in slices or [] if r["regression"]]:
        checks.append(
            {
                "check": f"no regression on slice {row['slice']}",
                "passed": False,
                "detail": f"{row}",
            }
        )
    checks.extend(extra_checks or [])
    failed = [c for c in checks if not c["passed"]]
    reason = (
        "; ".join(f"failed: {c['check']} ({c['detail']})" for c in failed)
        if failed
        else "; ".join(f"{c['check']} ({c['detail']})" for c in checks)
    )
    return {"passed": not failed, "reason": reason, "checks": checks}


def freshness_check(logical_date: str, production_date: str | None) -> list[dict]:
    """A run for an earlier date than production's (a backfill) never replaces it.

    Production was trained on newer data, and the earlier run's holdout days lie
    inside production's training window, so the comparison would not be fair either.
    """
    if production_date is None:
        return []
    return [
        {
            "check": "trained on data at least as new as production's",
            "passed": logical_date >= production_date,
            "detail": f"logical date {logical_date} vs production's {production_date}",
        }
    ]


def paired_bootstrap(
    challenger: np.ndarray, champion: np.ndarray, n_boot: int = 2000, seed: int = 0
) -> dict:
    """Mean per-query difference (challenger - champion) with a one-sided 95% bound.

    The queries are resampled in pairs, so query difficulty cancels out. The
    challenger is *significantly worse* when even the upper bound is below 0.
    """
    from scipy.stats import wilcoxon

    diff = np.asarray(challenger, dtype=float) - np.asarray(champion, dtype=float)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(n_boot, diff.size))].mean(axis=1)
    upper = float(np.percentile(means, 95))
    nonzero = diff[diff != 0]
    p_less = float(wilcoxon(nonzero, alternative="less").pvalue) if nonzero.size >= 10 else None
    return {
        "queries": int(diff.size),
        "mean_diff": round(float(diff.mean()), 5),
        "upper_95": round(upper, 5),
        "lower_95": round(float(np.percentile(means, 5)), 5),
        "wilcoxon_p_less": p_less,
        "significantly_worse": upper < 0,
    }


def slice_report(
    per_query: pd.DataFrame,
    slices: pd.DataFrame,
    reference: str,
    max_drop: float,
    min_queries: int,
) -> list[dict]:
    """NDCG@10 of the model and ``reference`` on each slice; a drop beyond ``max_drop``
    on a slice with at least ``min_queries`` queries is a regression."""
    rows = []
    for name in slices.columns:
        members = slices.index[slices[name]]
        part = per_query.loc[per_query.index.intersection(members)]
        model, ref = float(part["model"].mean()), float(part[reference].mean())
        drop = ref - model if len(part) else 0.0
        rows.append(
            {
                "slice": name,
                "queries": int(len(part)),
                "model": round(model, 4) if len(part) else None,
                reference: round(ref, 4) if len(part) else None,
                "regression": bool(len(part) >= min_queries and drop > max_drop),
            }
        )
    return rows
