"""The model's share of ``/rank``: XGBoost's ``inplace_predict`` against a compiled model.

``make bench-predict`` (``uv run python -m benchmarks.predict_bench [--date D]``) takes a
finished run's candidate model and holdout (default: the newest run under ``CR_DATA_DIR``)
and scores the holdout's rows ``ROWS`` at a time, as ``/rank`` scores its 100 candidates,
in one thread (the server's ``CR_SERVING_PREDICT_THREADS=1``):

- ``xgboost``: ``Booster.inplace_predict``, the serving path (``pipelines.scoring.score``);
- ``xgboost, first half of the trees``: the same with ``iteration_range``;
- ``treelite``: the same trees compiled to C by Treelite and TL2cgen (gcc ``-O2``).

Each variant reports CPU µs per call of ``ROWS`` rows (``time.process_time`` over the
whole holdout, several passes, the best pass), its ratio to ``xgboost``, the largest score
difference from it over the holdout, and the holdout's NDCG@10 with the pipeline's own
metric. Results go
to ``benchmarks/results/predict.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import tl2cgen
import treelite

from pipelines import catalog, contracts, evaluation
from pipelines.config import get_settings
from pipelines.scoring import to_matrix

RESULTS = Path(__file__).resolve().parent / "results" / "predict.json"
ROWS = 100  # rows per predict call: a /rank request's candidates


def _cpu_per_call(predict, calls: list[np.ndarray], passes: int) -> float:
    """The best pass's CPU seconds per call (the first call warms up caches)."""
    predict(calls[0])
    best = float("inf")
    for _ in range(passes):
        start = time.process_time()
        for matrix in calls:
            predict(matrix)
        best = min(best, (time.process_time() - start) / len(calls))
    return best


def _ndcg(holdout: pd.DataFrame, scores: np.ndarray, seed: int) -> float:
    per_query = evaluation.per_query_metrics(holdout.assign(score=scores), "score", seed)
    return round(evaluation.summarise(per_query)["ndcg@10"], 4)


def _treelite(booster, workdir: Path):
    """``booster`` compiled to a shared library, and its one-thread predict function."""
    model = treelite.frontend.from_xgboost(booster)
    library = workdir / "model.so"
    tl2cgen.export_lib(
        model, toolchain="gcc", libpath=str(library), params={"parallel_comp": 8}, verbose=False
    )
    predictor = tl2cgen.Predictor(str(library), nthread=1)

    def predict(matrix: np.ndarray) -> np.ndarray:
        out = predictor.predict(tl2cgen.DMatrix(matrix, dtype="float32"))
        return np.asarray(out, dtype=np.float32).reshape(-1)

    return predict


def run(day: date | None, passes: int, out: Path) -> dict:
    import xgboost as xgb

    settings = get_settings()
    day = day or catalog.SUMMARY.dates(settings)[-1]
    booster = xgb.Booster(model_file=str(catalog.CANDIDATE.path(settings, date=day)))
    booster.set_param({"nthread": 1})
    holdout = pd.read_parquet(catalog.HOLDOUT.path(settings, date=day))
    holdout = holdout.sort_values("query_id", kind="stable").reset_index(drop=True)
    matrix = to_matrix(holdout, contracts.MODEL_FEATURES)
    calls = [matrix[i : i + ROWS] for i in range(0, len(matrix) - ROWS + 1, ROWS)]
    trees = booster.num_boosted_rounds()

    variants = {
        "xgboost": lambda m: booster.inplace_predict(m),
        "xgboost, first half of the trees": lambda m: booster.inplace_predict(
            m, iteration_range=(0, trees // 2)
        ),
    }
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        variants["treelite"] = _treelite(booster, Path(tmp))
        compile_s = time.perf_counter() - started
        reference = np.asarray(variants["xgboost"](matrix)).reshape(-1)
        results = {}
        for name, predict in variants.items():
            scores = np.asarray(predict(matrix)).reshape(-1)
            results[name] = {
                "cpu_us_per_call": round(_cpu_per_call(predict, calls, passes) * 1e6, 1),
                "max_abs_score_diff": float(np.max(np.abs(scores - reference))),
                "ndcg@10": _ndcg(holdout, scores, settings.seed),
            }
    base = results["xgboost"]["cpu_us_per_call"]
    for value in results.values():
        value["cpu_vs_xgboost"] = round(value["cpu_us_per_call"] / base, 3)
    report = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "make bench-predict",
        "run": day.isoformat(),
        "model": {"trees": trees, "features": len(contracts.MODEL_FEATURES)},
        "holdout_rows": len(matrix),
        "rows_per_call": ROWS,
        "calls": len(calls),
        "passes": passes,
        "treelite_compile_s": round(compile_s, 1),
        "versions": {
            "xgboost": xgb.__version__,
            "treelite": treelite.__version__,
            "tl2cgen": tl2cgen.__version__,
            "python": platform.python_version(),
        },
        "variants": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.predict_bench", description=__doc__)
    ap.add_argument("--date", type=date.fromisoformat, help="the run's logical date")
    ap.add_argument("--passes", type=int, default=5, help="passes over the holdout (best kept)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    report = run(args.date, args.passes, args.out)
    for name, value in report["variants"].items():
        print(f"{name:34s} {json.dumps(value)}")
    return report


if __name__ == "__main__":
    main()
