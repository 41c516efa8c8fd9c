"""A server-sent-events response whose producer is cancelled the moment the client leaves.

The producer writes `data: ...` events through a callback; a watcher task waits for the
client's `http.disconnect` and cancels the producer's scope, so the generation under it stops
and frees its engine room at once (not whenever the next write would have failed). An error
after the headers went out is reported in-band as an OpenAI error event; `[DONE]` ends the rest.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
from anyio import CancelScope
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from parafill.errors import real_error

T = TypeVar("T")
log = logging.getLogger("parafill.server")
Write = Callable[[str], Awaitable[None]]
Produce = Callable[[Write], Awaitable[None]]
Describe = Callable[[Exception], dict[str, Any]]


def event(payload: str) -> str:
    return f"data: {payload}\n\n"


class EventStream(Response):
    media_type = "text/event-stream"

    def __init__(self, produce: Produce, describe: Describe) -> None:
        # Response.__init__ would render an empty body and send content-length: 0
        self.status_code = 200
        self.background = None
        self.init_headers({"cache-control": "no-cache", "x-accel-buffering": "no"})
        self.produce, self.describe = produce, describe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
        await send(start)

        async def write(data: str) -> None:
            await send({"type": "http.response.body", "body": data.encode(), "more_body": True})

        async with anyio.create_task_group() as tg:
            tg.start_soon(_watch, receive, tg.cancel_scope)
            try:
                await self.produce(write)
            except Exception as exc:  # the status line is gone: say it in the stream
                log.error("a stream failed after its headers were sent", exc_info=exc)
                await write(event(json.dumps(self.describe(exc))))
            await write(event("[DONE]"))
            tg.cancel_scope.cancel()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def unless_gone(receive: Receive, work: Callable[[], Awaitable[T]]) -> T | None:
    """`work()`'s result, or None once the client has disconnected: a whole (non-streaming)
    response is cancelled the moment its client leaves, like a stream, so an abandoned
    request frees its engine room at once instead of decoding to its end for nobody."""
    done: list[T] = []
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_watch, receive, tg.cancel_scope)
            done.append(await work())
            tg.cancel_scope.cancel()
    except Exception as exc:  # the handler's own error, as if no watcher ran beside it
        real = real_error(exc)
        raise (real if isinstance(real, Exception) else exc) from None
    return done[0] if done else None


async def _watch(receive: Receive, scope: CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()
