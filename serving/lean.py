"""``POST /rank`` without BentoML's per-request path, for the bodies that are valid.

BentoML's request path costs about 1 ms of CPU per call on /rank's body (its ``/echo``,
which does no work, costs that much against 0.2 ms for a bare ASGI app that parses the same
body: ``make bench-serve``). This pure-ASGI middleware, inside ``serving.guard`` (so the
media type and the size limit are checked already), answers a ``POST`` to its route
itself:

- the body is decoded and validated in one pass by msgspec, against a ``msgspec.Struct``
  that accepts only bodies the route's pydantic model accepts too (``tests/test_lean.py``
  holds the two to that);
- the handler is the service's own, and its answer (status, JSON bytes) goes out as is.

Any body msgspec refuses goes on, whole, to BentoML's route, which answers it exactly as
before: every 4xx keeps its wording and its documented shape, and the OpenAPI document is
BentoML's. Other methods and routes pass through untouched.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from serving.guard import ASGIApp, Receive, Scope, Send, replay

# (decoded request) -> (status, JSON body); None: no handler yet, let the app answer
Handler = Callable[[Any], Awaitable[tuple[int, bytes] | None]]
_JSON_HEADERS = [(b"content-type", b"application/json")]


class LeanRoute:
    """The middleware: ``route`` answered by ``handler`` for bodies that decode as ``body``."""

    def __init__(self, app: ASGIApp, route: str, body: type, handler: Handler) -> None:
        self.app = app
        self.route = route
        self.decoder = msgspec.json.Decoder(body)
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.route or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body = await _read(receive)
        if body is None:  # the client left mid-body: nothing to answer
            return
        try:
            request = self.decoder.decode(body)
        # ValidationError is a DecodeError; bytes that are not UTF-8 raise UnicodeDecodeError
        # (msgspec#714). Either way BentoML's route words the 4xx.
        except (msgspec.DecodeError, UnicodeDecodeError):
            await self.app(scope, replay(body, receive), send)
            return
        answer = await self.handler(request)
        if answer is None:
            await self.app(scope, replay(body, receive), send)
            return
        status, payload = answer
        headers = [*_JSON_HEADERS, (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


async def _read(receive: Receive) -> bytes | None:
    """The whole request body (its size is bounded by ``serving.guard`` outside), or None
    when the client disconnects before its end."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)
