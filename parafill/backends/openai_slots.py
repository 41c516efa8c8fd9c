"""The per-request side of the OpenAI backend's pacing: a request's total deadline (`Clock`,
raising `DeadlinePassed` with what it was waiting for) and one base URL's concurrency cap with
its count of outstanding requests (`Endpoint`). No HTTP here; `openai_http` drives both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import anyio

from parafill.backends.base import BackendError


class DeadlinePassed(Exception):
    """The request's deadline passed; the message says what it was waiting for."""


class Clock:
    """One request's deadline, started when its first attempt is sent. Chunks are never
    yielded inside `bound()` (a cancel scope must not span a generator's yield)."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self._at: float | None = None

    def start(self) -> None:
        if self.seconds is not None and self._at is None:
            self._at = anyio.current_time() + self.seconds

    def left(self) -> float:
        return float("inf") if self._at is None else self._at - anyio.current_time()

    @contextmanager
    def bound(self, waiting: str = "") -> Iterator[None]:
        """Run the block until the deadline at most; then raise DeadlinePassed(waiting)."""
        if self._at is None:
            yield
            return
        with anyio.move_on_after(self.left()) as scope:
            yield
        if scope.cancelled_caught:
            raise DeadlinePassed(waiting)

    def error(self, url: str, attempt: int, what: str) -> BackendError:
        return BackendError(
            f"{url}: no answer within the {self.seconds:g} s deadline (OpenAIConfig.deadline);"
            f" attempt {attempt}: {what}"
        )


class Endpoint:
    """One base URL: its concurrency cap and how many requests it has outstanding."""

    def __init__(self, url: str, max_concurrency: int) -> None:
        self.url = url
        self.limiter = anyio.CapacityLimiter(max_concurrency)
        self.outstanding = 0

    @asynccontextmanager
    async def slot(self, clock: Clock) -> AsyncIterator[None]:
        # Counted before waiting on the cap, so concurrent picks see each other at once.
        self.outstanding += 1
        borrower = object()  # one per attempt: a task may drive several streams at once
        try:
            with clock.bound("waiting for a free slot"):
                await self.limiter.acquire_on_behalf_of(borrower)
            clock.start()
            try:
                yield
            finally:
                self.limiter.release_on_behalf_of(borrower)
        finally:
            self.outstanding -= 1
