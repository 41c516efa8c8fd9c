"""The request body size limit: an ASGI middleware that reads each body before any handler sees
it and answers 413 (OpenAI error body) once it passes `limit` bytes — at once from a declared
Content-Length, or while counting a chunked body. uvicorn discards the unread rest, so the
client still reads the 413. Prompt length in tokens is not checked here: handlers check it
against the model's context (400 context_length_exceeded).
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from parafill.server.errors import APIError

DEFAULT_MAX_BODY = 4 * 2**20  # bytes; `parafill serve --max-body-size`


class BodyLimit:
    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            await _refuse(send, self.limit, declared)
            return
        body = await _read(receive, self.limit)
        if body is None:  # the client left while sending
            return
        if len(body) > self.limit:
            await _refuse(send, self.limit, None)
            return
        await self.app(scope, _replay(body, receive), send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers") or ():
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:  # uvicorn refuses these first; never trust it to
                return None
    return None


async def _read(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or its first chunks once they pass `limit` (the rest is not read)."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk: bytes = message.get("body", b"")
        parts.append(chunk)
        size += len(chunk)
        if size > limit or not message.get("more_body", False):
            return b"".join(parts)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body once, in one message; then the real `receive` (disconnects for streams)."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return again


async def _refuse(send: Send, limit: int, size: int | None) -> None:
    told = f"request body is {size} bytes," if size is not None else "request body is"
    err = APIError(
        413,
        f"{told} over this server's limit of {limit} bytes ({_human(limit)}); send a shorter "
        "prompt, or start parafill serve with a larger --max-body-size",
        code="request_too_large",
    )
    body = json.dumps(err.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _human(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n} bytes"
