"""Infra-validation: serve a candidate in a real ``bentoml serve`` and send it real requests.

Offline metrics say the model ranks well; this says it loads, reads the online store
and answers the API contract in the serving stack before anyone depends on it.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from pipelines.config import PROJECT_ROOT, Settings

SERVICE = "serving.service:Ranker"


class ServerError(RuntimeError):
    """The server did not come up; the message carries the tail of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _server_env(settings: Settings, tag: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env["CR_DATA_DIR"] = str(settings.data_dir)
    env["BENTOML_HOME"] = str(settings.bentoml_home)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p
    )
    env.pop("CR_MODEL_TAG", None)
    if tag:
        env["CR_MODEL_TAG"] = tag
    return env


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _stop(proc: subprocess.Popen, grace_s: float = 10) -> None:
    """SIGTERM the server's process group (arbiter and workers), SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace_s)


@contextlib.contextmanager
def serve(
    settings: Settings,
    tag: str | None = None,
    port: int | None = None,
    *,
    timeout_s: float = 120,
    require_ready: bool = True,
) -> Iterator[str]:
    """Run ``bentoml serve`` on loopback and yield its base URL; always stop it afterwards.

    ``tag`` pins the model (``CR_MODEL_TAG``); None serves what the production pointer names.
    With ``require_ready`` the URL is yielded once ``/readyz`` answers 200 (a model is
    loaded), otherwise as soon as the server is up (``/livez``).
    """
    port = port or free_port()
    host = "127.0.0.1"
    base = f"http://{host}:{port}"
    log_file = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the server
        prefix="bentoml-serve-", suffix=".log", delete=False
    )
    cmd = [sys.executable, "-m", "bentoml", "serve", SERVICE, "--host", host, "--port", str(port)]
    proc = subprocess.Popen(
        cmd,
        cwd=PROJECT_ROOT,
        env=_server_env(settings, tag),
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so we can stop the workers too
    )
    log_path = Path(log_file.name)
    try:
        _wait_up(proc, base, log_path, timeout_s, require_ready)
        yield base
    finally:
        _stop(proc)
        log_file.close()
        log_path.unlink(missing_ok=True)


def _wait_up(
    proc: subprocess.Popen, base: str, log_path: Path, timeout_s: float, require_ready: bool
) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    with httpx.Client(timeout=2) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ServerError(
                    f"bentoml serve exited with {proc.returncode}:\n{_tail(log_path)}"
                )
            try:
                if client.get(f"{base}/livez").status_code == 200:
                    if not require_ready:
                        return
                    ready = client.get(f"{base}/readyz")
                    if ready.status_code == 200:
                        return
                    # The service is up, so its model either loaded or it did not: say why.
                    why = client.post(f"{base}/model_version").text.strip()
                    raise ServerError(f"server up but not ready: {why or ready.text.strip()}")
            except httpx.TransportError as exc:
                last = repr(exc)
            time.sleep(0.25)
    raise ServerError(f"server not up after {timeout_s:.0f}s ({last}):\n{_tail(log_path)}")


def infra_validate(
    tag: str,
    settings: Settings,
    sample_requests: list[dict],
    timeout_s: float = 120,
) -> dict:
    """Serve ``tag`` for real and check the sample ``/rank`` requests; never raises for a bad model.

    Passes when every request answers 200 with finite scores, sorted best first, from
    ``tag``.
    """
    errors: list[str] = []
    latencies: list[float] = []
    result = {"passed": False, "tag": tag, "requests": 0, "latency_ms_p50": None}
    try:
        with serve(settings, tag, timeout_s=timeout_s) as base, httpx.Client(timeout=30) as http:
            for i, body in enumerate(sample_requests):
                t0 = time.perf_counter()
                resp = http.post(f"{base}/rank", json=body)
                latencies.append((time.perf_counter() - t0) * 1000)
                result["requests"] += 1
                errors.extend(f"request {i}: {e}" for e in _check(resp, tag))
    except (ServerError, httpx.HTTPError, OSError) as exc:
        errors.append(f"server: {exc}")
    if latencies:
        latencies.sort()
        result["latency_ms_p50"] = round(latencies[len(latencies) // 2], 2)
        result["latency_ms_max"] = round(latencies[-1], 2)
    if not sample_requests:
        errors.append("no sample requests")
    result["errors"] = errors
    result["passed"] = not errors
    result["reason"] = (
        f"{result['requests']} requests answered correctly by {tag}" if not errors else errors[0]
    )
    return result


def _check(resp: httpx.Response, tag: str) -> list[str]:
    if resp.status_code != 200:
        return [f"HTTP {resp.status_code}: {resp.text[:300]}"]
    body = resp.json()
    problems = []
    if body.get("model_version") != tag:
        problems.append(f"model_version {body.get('model_version')!r} != {tag!r}")
    scores = [item.get("score") for item in body.get("items", [])]
    if not all(isinstance(s, int | float) and math.isfinite(s) for s in scores):
        problems.append(f"non-finite scores: {scores[:10]}")
    elif scores != sorted(scores, reverse=True):
        problems.append("items are not sorted by score")
    return problems
