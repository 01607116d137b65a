"""What reaches the service's API routes, and what their errors look like (pure ASGI).

BentoML answers some bad requests with a 500 or with a body its own OpenAPI document
contradicts, and accepts bodies of any size and type. This middleware sits in front of
the API routes and makes the contract hold:

- A POST body must be JSON: another ``Content-Type`` (``multipart/form-data`` without a
  boundary was a 500) gets a 415. A request without one is read as JSON, as BentoML does.
- A body larger than ``max_body_bytes`` gets a 413, whether it declares its length or
  streams it in chunks; a ``Content-Length`` that is not a number gets a 400.
- Every 4xx from an API route has the documented ``InvalidArgument`` shape:
  ``{"error": str, "detail": str}``. BentoML's validation errors carry ``detail`` as a
  list of pydantic errors, and its other 4xx wrap the body in a list.
- ``GET /model_version`` is the read it should be (BentoML routes are POST only), and
  ``HEAD`` answers with the GET's status and headers and no body.
- The OpenAPI document (``/docs.json``) says all of this: the 413 and 415 answers, that
  a route with input needs a body (BentoML answers 400 without one), and the GET reads.

Requests that pass cost a dict lookup and a header scan; only error responses are
buffered and rewritten.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_TYPES = {"application/json"}
READS = {"/model_version"}  # POST-only BentoML routes that also answer GET and HEAD
DOCUMENT = "/docs.json"
ERROR_SCHEMA = {"$ref": "#/components/schemas/InvalidArgument"}  # {"error", "detail"}
GUARD_ERRORS = {"413": "Payload Too Large", "415": "Unsupported Media Type"}


async def _reply(send: Send, status: int, error: str, detail: str) -> None:
    body = json.dumps({"error": error, "detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _detail_text(detail: Any) -> str:
    """One readable line from BentoML's and pydantic's error details."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, dict):
        return str(detail.get("error") or detail.get("msg") or json.dumps(detail))
    if isinstance(detail, list | tuple):
        parts = []
        for item in detail:
            if isinstance(item, dict) and "msg" in item:
                where = ".".join(str(p) for p in item.get("loc", ()))
                parts.append(f"{where}: {item['msg']}" if where else str(item["msg"]))
            else:
                parts.append(_detail_text(item))
        return "; ".join(parts)
    return str(detail)


def normalise_error(body: bytes, status: int) -> bytes:
    """A 4xx body in the documented shape ``{"error": str, "detail": str}``."""
    try:
        data = json.loads(body)
    except ValueError:
        data = body.decode(errors="replace")
    if isinstance(data, list) and len(data) == 1:  # BentoML's ``({"error": ...},)``
        data = data[0]
    if isinstance(data, dict):
        error = str(data.get("error") or f"HTTP {status}")
        detail = _detail_text(data.get("detail", error))
    else:
        error, detail = f"HTTP {status}", _detail_text(data)
    return json.dumps({"error": error, "detail": detail}).encode()


def _headers_only(send: Send) -> Send:
    """``send`` for a HEAD: the status and headers (Content-Length too) as the GET would
    send them, every body message emptied."""

    async def head(message: Message) -> None:
        if message["type"] == "http.response.body":
            message = {**message, "body": b""}
        await send(message)

    return head


class BodyTooLarge(Exception):
    """A request body ran past its limit."""


async def read_body(receive: Receive, limit: int | None = None) -> bytes | None:
    """The whole request body, or None when the client disconnects before its end. Raises
    ``BodyTooLarge`` as soon as it runs past ``limit`` bytes (None: no limit)."""
    chunks, seen = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away
            return None
        chunk = message.get("body", b"")
        seen += len(chunk)
        if limit is not None and seen > limit:
            raise BodyTooLarge(f"the request body is larger than {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` that gives the body read already, then what the client sends next."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def document(spec: dict, routes: set[str]) -> dict:
    """BentoML's OpenAPI document, with what the guard adds to the guarded routes."""
    for path in routes:
        post = spec.get("paths", {}).get(path, {}).get("post")
        if post is None:
            continue
        for status, text in GUARD_ERRORS.items():
            post["responses"][status] = {
                "description": text,
                "content": {"application/json": {"schema": ERROR_SCHEMA}},
            }
        if path in READS:
            get = {k: v for k, v in post.items() if k != "requestBody"}
            spec["paths"][path]["get"] = {**get, "operationId": f"{post['operationId']}_get"}
        elif "requestBody" in post:
            post["requestBody"]["required"] = True
    return spec


class RequestGuard:
    """The middleware; ``routes`` are the API routes it guards (the others pass through)."""

    def __init__(self, app: ASGIApp, routes: list[str], max_body_bytes: int) -> None:
        self.app = app
        self.routes = set(routes)
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.routes:
            if scope["type"] == "http" and scope["path"] == DOCUMENT:
                send = self._rewritten(send, self._document, statuses=range(200, 300))
            await self.app(scope, receive, send)
            return
        if scope["method"] in ("GET", "HEAD") and scope["path"] in READS:
            if scope["method"] == "HEAD":
                send = _headers_only(send)
            scope = {**scope, "method": "POST"}  # and checked like one: BentoML reads a body
        if scope["method"] == "POST":
            problem, declared = self._check_headers(scope)
            if problem is not None:
                await _reply(send, *problem)
                return
            if not declared:  # chunked: read it here, within the limit, then replay it
                try:
                    body = await read_body(receive, self.max_body_bytes)
                except BodyTooLarge:
                    await _reply(send, 413, "Payload Too Large", self._too_large)
                    return
                if body is None:  # the client left mid-body: nothing to answer
                    return
                receive = replay(body, receive)
        await self.app(scope, receive, self._errors_in_shape(send))

    @property
    def _too_large(self) -> str:
        return f"the request body is larger than {self.max_body_bytes} bytes"

    def _check_headers(self, scope: Scope) -> tuple[tuple[int, str, str] | None, bool]:
        """The reply for a bad Content-Type or Content-Length, if any, and whether the body
        declared its length (the server then stops it from running past it)."""
        declared = False
        for name, value in scope["headers"]:
            if name == b"content-type":
                media = value.decode("latin-1").split(";", 1)[0].strip().lower()
                if media not in JSON_TYPES:
                    return (
                        415,
                        "Unsupported Media Type",
                        f"the body must be application/json, not {media or 'empty'!r}",
                    ), declared
            elif name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    return (400, "Bad Request", "Content-Length is not a number"), declared
                if length > self.max_body_bytes:
                    return (413, "Payload Too Large", self._too_large), declared
                declared = True
        return None, declared

    def _document(self, body: bytes, _status: int) -> bytes:
        return json.dumps(document(json.loads(body), self.routes)).encode()

    def _errors_in_shape(self, send: Send) -> Send:
        """``send`` that passes 2xx/3xx/5xx through and rewrites 4xx bodies."""
        return self._rewritten(send, normalise_error, statuses=range(400, 500))

    @staticmethod
    def _rewritten(send: Send, rewrite: Callable[[bytes, int], bytes], statuses: range) -> Send:
        """``send`` that buffers a response whose status is in ``statuses`` and sends
        ``rewrite(body, status)`` as JSON instead; other responses pass through."""
        start: Message | None = None
        chunks: list[bytes] = []

        async def shaped(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and message["status"] in statuses:
                start = message
                return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            body = rewrite(b"".join(chunks), start["status"])
            headers = [
                (k, v) for k, v in start["headers"] if k not in (b"content-length", b"content-type")
            ]
            headers += [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        return shaped
