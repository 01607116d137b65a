"""``serving.guard.RequestGuard`` driven as ASGI, with bodies in several chunks and an app
that answers in several: the paths the in-process HTTP client never takes (it sends a body
as one message)."""

from __future__ import annotations

import asyncio
import json

import pytest

from serving.guard import RequestGuard

LIMIT = 100


def _scope(method: str = "POST", path: str = "/rank", headers: list | None = None) -> dict:
    return {"type": "http", "method": method, "path": path, "headers": headers or []}


def _run(guard: RequestGuard, scope: dict, chunks: list[bytes], disconnect: bool = False):
    """Feed ``chunks`` as ``http.request`` messages (then a disconnect, if asked); return
    what the guard sent, as (status, headers, body)."""
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1 or disconnect}
        for i, c in enumerate(chunks)
    ]
    if disconnect:
        messages.append({"type": "http.disconnect"})
    sent: list[dict] = []

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    asyncio.run(guard(scope, receive, send))
    if not sent:
        return None
    start, *bodies = sent
    return start["status"], dict(start["headers"]), b"".join(m.get("body", b"") for m in bodies)


class App:
    """Reads the whole body, then answers ``status`` with ``reply`` in two body messages."""

    def __init__(self, status: int = 200, reply: bytes = b'{"ok": true}'):
        self.status, self.reply, self.calls = status, reply, []

    async def __call__(self, scope, receive, send):
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        self.calls.append((scope["method"], body))
        await send({"type": "http.response.start", "status": self.status, "headers": []})
        half = len(self.reply) // 2
        await send({"type": "http.response.body", "body": self.reply[:half], "more_body": True})
        await send({"type": "http.response.body", "body": self.reply[half:]})


def _guard(app: App) -> RequestGuard:
    return RequestGuard(app, routes=["/rank", "/model_version"], max_body_bytes=LIMIT)


def test_a_chunked_body_under_the_limit_reaches_the_app_whole():
    app = App()
    status, _, body = _run(_guard(app), _scope(), [b"a" * 40, b"b" * 40, b"c" * 20])
    assert (status, body) == (200, b'{"ok": true}')  # 2xx passes through, both chunks
    assert app.calls == [("POST", b"a" * 40 + b"b" * 40 + b"c" * 20)]


def test_a_chunked_body_crossing_the_limit_on_a_later_chunk_is_a_413():
    app = App()
    status, _, body = _run(_guard(app), _scope(), [b"a" * 40, b"b" * 40, b"c" * 21])
    assert status == 413 and str(LIMIT) in json.loads(body)["detail"]
    assert app.calls == []  # the app never saw it


def test_a_client_that_leaves_mid_body_gets_nothing_and_the_app_is_not_called():
    app = App()
    assert _run(_guard(app), _scope(), [b"a" * 10], disconnect=True) is None
    assert app.calls == []


@pytest.mark.parametrize(
    ("reply", "detail"),
    [
        (b'{"error": "1 validation error", "detail": [{"loc": ["k"], "msg": "bad"}]}', "k: bad"),
        (b'[{"error": "Not Found"}]', "Not Found"),  # BentoML's tuple-wrapped 4xx
        (b"plain text", "plain text"),
    ],
)
def test_a_4xx_sent_in_chunks_is_reshaped_whole(reply, detail):
    status, headers, body = _run(_guard(App(400, reply)), _scope(), [b"{}"])
    data = json.loads(body)
    assert status == 400 and set(data) == {"error", "detail"} and data["detail"] == detail
    assert headers[b"content-length"] == str(len(body)).encode()


def test_a_read_by_get_is_checked_like_a_post():
    app = App()
    multipart = [(b"content-type", b"multipart/form-data")]
    status, _, _ = _run(_guard(app), _scope("GET", "/model_version", multipart), [b""])
    assert status == 415 and app.calls == []
    assert _run(_guard(app), _scope("GET", "/model_version"), [b""])[0] == 200
    assert app.calls == [("POST", b"")]


def test_a_head_read_gets_the_get_headers_and_no_body():
    reply = b'{"model_version": "ranker:abc"}'
    app = App(200, reply)
    got = _run(_guard(app), _scope("GET", "/model_version"), [b""])
    head = _run(_guard(app), _scope("HEAD", "/model_version"), [b""])
    assert got[:2] == (200, {}) and got[2] == reply
    assert head == (200, {}, b"")
    assert app.calls == [("POST", b""), ("POST", b"")]
    multipart = [(b"content-type", b"multipart/form-data")]
    assert _run(_guard(app), _scope("HEAD", "/model_version", multipart), [b""])[0] == 415


def test_other_routes_pass_untouched():
    app = App(404, b"not json")
    status, _, body = _run(_guard(app), _scope(path="/elsewhere"), [b"x" * (LIMIT + 1)])
    assert (status, body) == (404, b"not json")
