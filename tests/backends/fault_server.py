"""A scripted, fault-injecting OpenAI-style HTTP server on 127.0.0.1 for backend tests.

Plain anyio sockets speaking just enough HTTP/1.1: each request takes the next `Reply` from
the script (then the default), which may be an error status with headers, a stall before the
headers, a slow stream, a stream whose connection is dropped part way, a stream of keep-alive
comments and nothing else, a stream that ignores max_tokens and never ends, an error event, or
a 200 body that is not a stream at all. One
connection per request (`Connection: close`). It records what it saw and which reply answered
each request; it never leaves the loopback address. `GET /v1/models` (a backend asking what
the server is) is answered apart, outside the script: a model list naming `owned_by` (or
`models_status` with an error), counted in `probes`, not in `requests`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
from anyio.abc import SocketAttribute, SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

REASONS = {200: "OK", 400: "Bad Request", 429: "Too Many Requests", 500: "Server Error"}


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0  # before the status line
    chunks: tuple[str, ...] = ("Hel", "lo", " world")
    chunk_delay: float = 0.0
    drop_after: int | None = None  # close the socket after this many chunks, mid-body
    usage: int | None = None  # completion_tokens in a final usage event
    finish: str | None = "stop"  # None: a final event without finish_reason
    logprobs: tuple[object, ...] | None = None  # each chunk's choice "logprobs" block, as sent
    keepalive: float | None = None  # 200, then only ": keep-alive" comments this far apart, forever
    forever: bool = False  # ignore max_tokens: send `chunks` again and again until a hang-up
    error: dict[str, object] | None = None  # {"error": this}: the first event, or the error body
    body: str | None = None  # a 200 body sent as it is, with `content_type` (not a stream)
    content_type: str = "text/event-stream"


@dataclass(frozen=True)
class Seen:
    at: float  # anyio.current_time() when the request was read
    path: str
    body: bytes


@dataclass
class FaultServer:
    script: list[Reply]
    default: Reply = field(default_factory=Reply)
    url: str = ""
    requests: list[Seen] = field(default_factory=list)
    served: list[Reply] = field(default_factory=list)  # the reply that answered each request
    disconnects: int = 0  # streams the client closed before the end
    hung_up: anyio.Event = field(default_factory=anyio.Event)  # set on the first disconnect
    active: int = 0
    max_active: int = 0
    owned_by: str = "fault-server"  # what GET /v1/models says the server is
    models_status: int = 200
    probes: int = 0  # GET /v1/models requests

    def gaps(self) -> list[float]:
        """Seconds between consecutive requests."""
        times = [s.at for s in self.requests]
        return [b - a for a, b in zip(times, times[1:], strict=False)]

    async def handle(self, stream: SocketStream) -> None:
        async with stream:
            try:
                method, path, body = await _read_request(stream)
                if method == "GET" and path.endswith("/models"):
                    self.probes += 1
                    await _models(stream, self.models_status, self.owned_by)
                    return
                self.requests.append(Seen(anyio.current_time(), path, body))
                reply = self.script.pop(0) if self.script else self.default
                self.served.append(reply)
                self.active += 1
                self.max_active = max(self.max_active, self.active)
                try:
                    await _respond(stream, reply, chat=path.endswith("/chat/completions"))
                finally:
                    self.active -= 1
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                self.disconnects += 1
                self.hung_up.set()
            except anyio.EndOfStream:
                pass  # the client opened a connection and sent nothing


async def _read_request(stream: SocketStream) -> tuple[str, str, bytes]:
    reader = BufferedByteReceiveStream(stream)
    head = (await reader.receive_until(b"\r\n\r\n", 65536)).decode("latin-1")
    request_line, *header_lines = head.split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    body = await reader.receive_exactly(int(headers.get("content-length", "0")))
    method, path, *_ = request_line.split(" ")
    return method, path, body


async def _models(stream: SocketStream, status: int, owned_by: str) -> None:
    models = {"object": "list", "data": [{"id": "test", "object": "model", "owned_by": owned_by}]}
    data = json.dumps(models if status == 200 else {"error": {"message": "no"}}).encode()
    extra = (("Content-Type", "application/json"), ("Content-Length", str(len(data))))
    await stream.send(_head(status, extra) + data)


def _head(status: int, headers: Sequence[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _event(payload: object) -> bytes:
    data = f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n".encode()
    return _frame(data)


def _frame(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"  # one HTTP/1.1 chunk


def _choice(text: str, finish: str | None, chat: bool) -> dict[str, object]:
    if chat:
        return {"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish}
    return {"index": 0, "text": text, "finish_reason": finish}


async def _respond(stream: SocketStream, reply: Reply, *, chat: bool) -> None:
    await anyio.sleep(reply.delay)
    if reply.status != 200 or reply.body is not None:
        error = reply.error or {"message": f"injected {reply.status}"}
        body = json.dumps({"error": error}) if reply.body is None else reply.body
        content_type = "application/json" if reply.body is None else reply.content_type
        data = body.encode()
        extra = (("Content-Type", content_type), ("Content-Length", str(len(data))))
        await stream.send(_head(reply.status, reply.headers + extra) + data)
        return
    extra = (("Content-Type", reply.content_type), ("Transfer-Encoding", "chunked"))
    await stream.send(_head(200, reply.headers + extra))
    if reply.keepalive is not None:
        while True:  # until the client hangs up
            await stream.send(_frame(b": keep-alive\n\n"))
            await anyio.sleep(reply.keepalive)
    if reply.error is not None:
        await stream.send(_event({"error": reply.error}) + b"0\r\n\r\n")
        return
    if reply.forever:
        await _stream_forever(stream, reply, chat=chat)
        return
    await _stream_chunks(stream, reply, chat=chat)


async def _stream_forever(stream: SocketStream, reply: Reply, *, chat: bool) -> None:
    """A server that ignores max_tokens: text events, never a finish, until the client hangs up."""
    while True:
        for i, text in enumerate(reply.chunks):
            choice = _choice(text, None, chat)
            if reply.logprobs is not None:
                choice["logprobs"] = reply.logprobs[i]
            await stream.send(_event({"choices": [choice]}))
            await anyio.sleep(reply.chunk_delay)


async def _stream_chunks(stream: SocketStream, reply: Reply, *, chat: bool) -> None:
    for i, text in enumerate(reply.chunks):
        if i == reply.drop_after:
            return  # the socket closes without the terminating chunk
        choice = _choice(text, None, chat)
        if reply.logprobs is not None:
            choice["logprobs"] = reply.logprobs[i]
        await stream.send(_event({"choices": [choice]}))
        await anyio.sleep(reply.chunk_delay)
    if reply.drop_after is not None:
        return
    await stream.send(_event({"choices": [_choice("", reply.finish, chat)]}))
    if reply.usage is not None:
        await stream.send(_event({"choices": [], "usage": {"completion_tokens": reply.usage}}))
    await stream.send(_event("[DONE]") + b"0\r\n\r\n")


@asynccontextmanager
async def fault_server(
    script: Sequence[Reply] = (), default: Reply | None = None
) -> AsyncIterator[FaultServer]:
    """Serve until the block ends; use it inside the test body (same task)."""
    server = FaultServer(list(script), default or Reply())
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as tg:
        server.url = f"http://127.0.0.1:{listener.extra(SocketAttribute.local_port)}"
        tg.start_soon(listener.serve, server.handle)
        yield server
        tg.cancel_scope.cancel()
