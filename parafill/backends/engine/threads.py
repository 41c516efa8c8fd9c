"""How many intra-op threads the CPU step runs with, chosen from measured step times.

With as many OpenMP threads as cores, a step whose cores are shared with another busy process
waits at every parallel region for a thread the OS has descheduled: decode fell from ~31 to
~2 tokens/s beside one busy neighbour on 2 cores. The tuner times short trials of the
candidate counts (all threads, half, one) now and then, and whenever the steps slow down,
and keeps the fastest. Pure bookkeeping plus `torch.set_num_threads`; the engine calls
`before()` and `after(seconds)` around each step.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import median
from typing import Literal, Protocol

import torch

TRIAL = 6  # steps timed per candidate in a trial
EVERY = 400  # steps between trials while the machine seems steady
SLOWER = 1.6  # a recent median this much above the trial's best starts a trial at once


@dataclass
class ThreadTuner:
    most: int  # the thread count torch starts with (its default: the cores it may use)
    apply: Callable[[int], None] = torch.set_num_threads
    current: int = 0
    best: dict[object, float] = field(default_factory=dict)  # per shape: the winner's median
    # step seconds in the last trial at that shape
    since: int = 0  # steps since the last trial
    recent: list[float] = field(default_factory=list)
    trial: list[int] = field(default_factory=list)  # candidates still to time, in order
    times: dict[int, list[float]] = field(default_factory=dict)
    key: object = None  # the shape the timed steps share (steps of other shapes restart)
    restarts: int = 0
    applied: int = 0  # the count last set (0: none yet, torch's own)

    def __post_init__(self) -> None:
        self.current = self.applied = self.most
        self._start_trial()  # the first steps measure which count this machine wants now

    @property
    def candidates(self) -> list[int]:
        return sorted({self.most, max(1, self.most // 2), 1}, reverse=True)

    def before(self) -> None:
        """Set the thread count for the coming step."""
        self._set(self.trial[0] if self.trial else self.current)

    def after(self, seconds: float, key: object = None) -> None:
        """Record a step's time; `key` names its shape (say, its batch width): only steps of
        one shape are compared, a change of shape starts the comparison over."""
        if key != self.key:
            self.key, self.recent = key, []
            self.restarts += bool(self.trial)
            if self.trial:  # shapes that keep changing: give the trial up, keep the count
                self._start_trial() if self.restarts <= 3 else self._give_up()
        if self.trial:
            n = self.trial[0]
            got = self.times.setdefault(n, [])
            got.append(seconds)
            if len(got) >= TRIAL:
                self.trial.pop(0)
                if not self.trial:
                    self._decide()
            return
        self.since += 1
        self.recent = [*self.recent[-(TRIAL - 1) :], seconds]
        best = self.best.get(self.key)
        slowed = (
            best is not None and len(self.recent) == TRIAL and median(self.recent) > SLOWER * best
        )
        if self.since >= EVERY or slowed:
            self._start_trial()

    def _start_trial(self) -> None:
        if len(self.candidates) < 2:
            return
        # the current count last, so the steps after the trial run as they were timed
        self.trial = [c for c in self.candidates if c != self.current] + [self.current]
        self.times = {}

    def _give_up(self) -> None:
        self.trial, self.times, self.since, self.restarts = [], {}, 0, 0
        self._set(self.current)

    def _decide(self) -> None:
        medians = {n: median(ts) for n, ts in self.times.items()}
        self.current = min(medians, key=lambda n: (medians[n], -n))
        self.best[self.key] = medians[self.current]
        self.since, self.recent, self.restarts = 0, [], 0
        self._set(self.current)

    def _set(self, n: int) -> None:
        if n != self.applied:
            self.apply(n)
            self.applied = n


class Threads(Protocol):
    def before(self) -> None: ...
    def after(self, seconds: float, key: object = None) -> None: ...


@dataclass
class FixedThreads:
    """A fixed count, set in the thread that runs the steps (OpenMP's count is per thread)."""

    n: int
    done: bool = False

    def before(self) -> None:
        if not self.done:
            torch.set_num_threads(self.n)
            self.done = True

    def after(self, seconds: float, key: object = None) -> None:
        return None


def threads_for(setting: int | Literal["auto"] | None, device: torch.device) -> Threads | None:
    """What sets the step's threads for `setting` (None: nothing; a GPU step: nothing)."""
    if setting is None or device.type != "cpu":
        return None
    if setting == "auto":  # up to the cores this process may run on (torch's own default)
        return ThreadTuner(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                           else os.cpu_count() or 1)  # fmt: skip
    return FixedThreads(setting)
