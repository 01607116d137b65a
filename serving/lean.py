"""``POST /rank`` without BentoML's per-request path, for the bodies that are valid.

BentoML's request path costs about 1 ms of CPU per call on /rank's body (its ``/echo``,
which does no work, costs that much against 0.2 ms for a bare ASGI app that parses the same
body: ``make bench-serve``). This pure-ASGI middleware, inside ``serving.guard`` (so the
media type and the size limit are checked already), answers a ``POST`` to its route
itself:

- the body is decoded and validated in one pass by msgspec, against a ``msgspec.Struct``
  that accepts only bodies the route's pydantic model accepts too (``tests/test_lean.py``
  holds the two to that);
- the handler is the service's own, and its answer (status, JSON bytes) goes out as is;
  an exception in it is logged and answered as BentoML's route answers one: a 500 with
  its JSON body, never the bare-text 500 of the server's outermost middleware.

Any body msgspec refuses goes on, whole, to BentoML's route, which answers it exactly as
before: every 4xx keeps its wording and its documented shape, and the OpenAPI document is
BentoML's. Other methods and routes pass through untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from serving.guard import ASGIApp, Receive, Scope, Send, read_body, replay

log = logging.getLogger(__name__)

# (decoded request) -> (status, JSON body); None: no handler yet, let the app answer
Handler = Callable[[Any], Awaitable[tuple[int, bytes] | None]]
# BentoML's route's answer to an exception in a handler (_bentoml_impl.server.app), as
# Starlette's JSONResponse writes it
UNEXPECTED = b'{"error":"An unexpected error has occurred, please check the server log."}'


class LeanRoute:
    """The middleware: ``route`` answered by ``handler`` for bodies that decode as ``body``."""

    def __init__(
        self, app: ASGIApp, route: str, body: type, handler: Handler, server: str = ""
    ) -> None:
        self.app = app
        self.route = route
        self.decoder = msgspec.json.Decoder(body)
        self.handler = handler
        # the headers BentoML's route sends with its JSON (``server``: its Server header)
        self.headers = [(b"content-type", b"application/json")]
        if server:
            self.headers.append((b"server", server.encode()))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.route or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body = await read_body(receive)  # its size is bounded by serving.guard, outside
        if body is None:  # the client left mid-body: nothing to answer
            return
        try:
            request = self.decoder.decode(body)
        # ValidationError is a DecodeError; bytes that are not UTF-8 raise UnicodeDecodeError
        # (msgspec#714). Either way BentoML's route words the 4xx.
        except (msgspec.DecodeError, UnicodeDecodeError):
            await self.app(scope, replay(body, receive), send)
            return
        try:
            answer = await self.handler(request)
        except Exception:
            log.exception("POST %s failed", self.route)
            answer = 500, UNEXPECTED
        if answer is None:
            await self.app(scope, replay(body, receive), send)
            return
        status, payload = answer
        headers = [*self.headers, (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
