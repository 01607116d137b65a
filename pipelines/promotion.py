"""The promotion gate: a candidate ships only if it passes every check."""

from __future__ import annotations


def gate(metrics: dict[str, dict | None], tolerance: float, metric: str = "ndcg@10") -> dict:
    """Pass iff the candidate beats popularity and trails production by at most ``tolerance``."""
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
    failed = [c for c in checks if not c["passed"]]
    reason = (
        "; ".join(f"failed: {c['check']} ({c['detail']})" for c in failed)
        if failed
        else "; ".join(f"{c['check']} ({c['detail']})" for c in checks)
    )
    return {"passed": not failed, "reason": reason, "checks": checks}
