"""The engine thread's inbox and loop, shared by `Engine` and the HF `FallbackEngine`.

Requests and cancellations arrive from other threads through an `Inbox`; `serve` runs steps
in the engine's own thread until told to stop, and sleeps on the inbox when there is nothing
to do (no spinning). The engines own what a step does; this owns only the hand-off.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
Outs = TypeVar("Outs")


@dataclass
class Inbox(Generic[T]):
    lock: threading.Condition = field(default_factory=threading.Condition)
    submitted: list[T] = field(default_factory=list)
    cancelled: set[int] = field(default_factory=set)
    next_id: int = 0

    def put(self, make: Callable[[int], T]) -> int:
        """Queue make(new id); returns the id."""
        with self.lock:
            seq_id, self.next_id = self.next_id, self.next_id + 1
            self.submitted.append(make(seq_id))
            self.lock.notify()
        return seq_id

    def cancel(self, seq_id: int) -> None:
        with self.lock:
            self.cancelled.add(seq_id)
            self.lock.notify()

    def take(self) -> tuple[list[T], set[int]]:
        """Everything that arrived since the last call."""
        with self.lock:
            got, gone = self.submitted, self.cancelled
            self.submitted, self.cancelled = [], set()
        return got, gone

    def wake(self) -> None:
        with self.lock:
            self.lock.notify()

    def idle_wait(self, busy: bool, timeout: float = 0.05) -> None:
        with self.lock:
            if not (busy or self.submitted):
                self.lock.wait(timeout=timeout)


def serve(
    inbox: Inbox[T],
    step: Callable[[], list[Outs]],
    busy: Callable[[], bool],
    deliver: Callable[[list[Outs]], None],
    stop: threading.Event,
) -> None:
    """Run steps until `stop` is set, handing each step's outputs to `deliver` at once."""
    while not stop.is_set():
        inbox.idle_wait(busy())
        outs = step()
        if outs:
            deliver(outs)
