"""Server CPU per request of two checkouts of the service, in interleaved rounds.

``uv run python -m benchmarks.serve_ab --other <worktree> [--rounds 3] [--out FILE]``
serves the promoted model of ``CR_DATA_DIR`` from this checkout and from ``--other`` (a
``git worktree`` of another commit, sharing this venv) in turn, ``--rounds`` times each,
and loads ``/rank`` and ``/echo`` of each for ``Plan.phase_s`` seconds at concurrency 1
and 4 (``serve_bench.run_path``: the same bodies, load generator and CPU accounting as
``make bench-serve``). On a shared machine whose speed drifts within the hour, rounds that
alternate are what make two checkouts comparable; ``/echo`` (BentoML without our work)
shows the drift. Prints and writes one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks import serve_bench as sb
from pipelines.config import PROJECT_ROOT, get_settings

ROUTES = ("/rank", "/echo")
CONCURRENCY = [1, 4]


def one_side() -> dict[str, Any]:
    """This checkout's server: CPU ms per request and p99 per route and concurrency."""
    settings = get_settings()
    plan = sb.Plan(concurrency=CONCURRENCY, rates=[])
    bodies, _ = sb.sample_bodies(settings, plan)
    out: dict[str, Any] = {}
    with sb.server(settings, "fast", {}) as (port, roots):
        for route in ROUTES:
            r = sb.run_path(route, port, route, [], roots, plan, bodies, counted=False)
            out[route] = {
                str(c["concurrency"]): {
                    "cpu_ms_per_request": c["cpu_ms_per_request"],
                    "p99_ms": c["p99_ms"],
                    "errors": c["errors"],
                }
                for c in r["concurrency"]
            }
    return out


def _side(root: Path) -> dict[str, Any]:
    """:func:`one_side` in a process of its own whose imports (the service, the bench) come
    from ``root``: this file is run by its path, so ``root`` needs no copy of it."""
    env = os.environ | {"PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--one-side"],
        cwd=root,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--other", type=Path, help="a worktree of the other commit")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--one-side", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one_side:
        print(json.dumps(one_side()))
        return
    if args.other is None:
        ap.error("--other is required")
    sides = [("this", PROJECT_ROOT), ("other", args.other.resolve())]
    rounds = []
    for k in range(args.rounds):
        # ABBA: a machine that drifts one way within the hour favours neither side
        for name, root in sides if k % 2 == 0 else sides[::-1]:
            result = _side(root)
            rounds.append({"round": k, "side": name, "root": str(root), **result})
            print(json.dumps(rounds[-1]), flush=True)
    report = {"machine": sb.machine(), "rounds": rounds}
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
