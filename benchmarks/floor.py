"""The floor for ``make bench-serve``: the least any Python ASGI server does for a /rank request.

A bare Starlette app under uvicorn, with as many workers as the real server
(``settings.serving_workers``), that takes the same JSON body as the service's /rank,
parses it with the stdlib ``json``, checks its shape and answers a small JSON: no
BentoML, no pydantic, no features, no model. What the real server spends above this is
what BentoML and the ranking cost; what this costs is the price of HTTP, the event loop
and JSON in Python on the machine, which no serving code can go below. (``/echo`` on the
real server is a different floor: BentoML's request path without the ranking.)

uvicorn picks uvloop and httptools when they are installed, as BentoML's workers do
(they run uvicorn with its default loop and HTTP parser too).

Usage: ``python -m benchmarks.floor --port 8000 [--workers 2]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from serving.contract import MAX_ITEMS

HOST = "127.0.0.1"
FIELDS = {"user_id", "item_ids", "k"}


def problem(body: Any) -> str | None:
    """What is wrong with a /rank body, or None: the shape ``RankRequest`` demands (a
    non-empty ``user_id`` string, 1 to 1000 string ``item_ids``, ``k`` a positive int or
    null, nothing else), checked by hand, so the floor pays for no validation library."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    if extra := set(body) - FIELDS:
        return f"unknown fields: {sorted(extra)}"
    user, items, k = body.get("user_id"), body.get("item_ids"), body.get("k")
    if not isinstance(user, str) or not user:
        return "user_id must be a non-empty string"
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_ITEMS:
        return f"item_ids must be a list of 1 to {MAX_ITEMS} strings"
    if not all(isinstance(i, str) for i in items):
        return "item_ids must be strings"
    if k is not None and (type(k) is not int or k < 1):
        return "k must be a positive integer or null"
    return None


async def rank(request: Request) -> JSONResponse:
    """Parse, check, and answer as small a JSON as ``/echo`` does."""
    try:
        body = json.loads(await request.body())
    except ValueError:  # includes UnicodeDecodeError
        return JSONResponse({"error": "the body is not JSON"}, status_code=400)
    if (wrong := problem(body)) is not None:
        return JSONResponse({"error": wrong}, status_code=422)
    return JSONResponse({"user_id": body["user_id"], "items": len(body["item_ids"])})


app = Starlette(routes=[Route("/rank", rank, methods=["POST"])])


# --- running it -------------------------------------------------------------------------------


def command(port: int, workers: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "benchmarks.floor",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]


def _ready(port: int) -> bool:
    """A valid body gets a 200: a worker has bound the app to the shared socket."""
    body = json.dumps({"user_id": "u", "item_ids": ["i"]}).encode()
    head = (
        f"POST /rank HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    try:
        with socket.create_connection((HOST, port), timeout=2) as sock:
            sock.sendall(head + body)
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


@contextlib.contextmanager
def running(port: int, workers: int, timeout_s: float = 60) -> Iterator[subprocess.Popen]:
    """The floor on ``127.0.0.1:port`` in a process group of its own, yielded once it
    answers a valid body; always stopped afterwards. Its output goes to stderr (the
    bench's console): it logs only warnings."""
    # stopped like the real server, as a process group (imported here: the workers that
    # import this module for ``app`` need none of the pipelines)
    from pipelines.infra_validation import _stop

    cwd = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen(command(port, workers), cwd=cwd, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while not _ready(port):
            if proc.poll() is not None:
                raise RuntimeError(f"the floor server exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the floor server did not answer on :{port} in {timeout_s}s")
            time.sleep(0.1)
        yield proc
    finally:
        _stop(proc)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.floor", description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    import uvicorn

    uvicorn.run(
        "benchmarks.floor:app",
        host=HOST,
        port=args.port,
        workers=args.workers,
        access_log=False,  # as the real server (logging.access.enabled = False)
        log_level="warning",
        server_header=False,  # as BentoML's workers
    )


if __name__ == "__main__":
    main()
