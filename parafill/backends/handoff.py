"""Handing an engine thread's outputs to the event loop without waiting for the loop.

An engine that waited for the loop to take each step's tokens would stall behind whatever the
loop is doing (a server writing the last token's SSE chunk, say) and then leave the loop idle
while it computes: the two would take turns instead of overlapping. `poster()` returns a
function the engine thread calls to schedule work on the loop and go on at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel

Post = Callable[..., None]


def poster() -> Post:
    """Call in the event loop. The result, `post(fn, *args)`, may be called from any thread:
    on asyncio it schedules `fn(*args)` on this loop in call order and returns at once
    (dropped after the loop closed: nobody is left to read it); on another anyio backend it
    waits for the loop to run `fn` (anyio has no fire-and-forget call)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not on asyncio
        loop = None
    if loop is not None:

        def post(fn: Callable[..., object], *args: Any) -> None:
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # the loop is closed
                pass

        return post
    token = anyio.lowlevel.current_token()

    def wait(fn: Callable[..., object], *args: Any) -> None:
        anyio.from_thread.run_sync(fn, *args, token=token)

    return wait
