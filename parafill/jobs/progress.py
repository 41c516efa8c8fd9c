"""What a batch job reports while it runs: events (started, one document finished, finished)
and the summary, plus the two ways of showing them: a rich progress bar (documents done / total,
documents/s, tokens/s, ETA, failures) on a terminal, plain lines elsewhere. Nothing here runs
a document.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as Bar


@dataclass(frozen=True)
class Summary:
    """A finished (or refused) job: `total` documents in the input, `skipped` because the
    output already had their record, `done` and `failed` in this run."""

    total: int
    skipped: int = 0
    done: int = 0
    failed: int = 0
    tokens: int = 0
    seconds: float = 0.0
    failed_before: int = 0  # error records kept from an earlier run (among `skipped`)

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.failed_before == 0

    def as_dict(self) -> dict[str, object]:
        s = max(self.seconds, 1e-9)
        return {
            "total": self.total, "done": self.done, "failed": self.failed,
            "skipped": self.skipped, "failed_before": self.failed_before, "tokens": self.tokens,
            "seconds": round(self.seconds, 3), "docs_per_s": round(self.done / s, 3),
            "tokens_per_s": round(self.tokens / s, 1),
        }  # fmt: skip


@dataclass(frozen=True)
class Started:
    name: str  # the input file, for messages
    total: int
    skipped: int  # already in the output (resumed)


@dataclass(frozen=True)
class DocDone:
    """One document's record was written; `error` is set for an error record."""

    line: int
    id: str | int
    tokens: int
    error: str | None = None


@dataclass(frozen=True)
class Finished:
    summary: Summary


JobEvent = Started | DocDone | Finished
Report = Callable[[JobEvent], Awaitable[None] | None]


@dataclass
class Tally:
    """Running counts for a display."""

    name: str = ""
    total: int = 0
    done: int = 0
    failed: int = 0
    tokens: int = 0
    start: float = field(default_factory=time.monotonic)

    def add(self, ev: DocDone) -> None:
        self.done += ev.error is None
        self.failed += ev.error is not None
        self.tokens += ev.tokens

    def rates(self) -> str:
        s = max(time.monotonic() - self.start, 1e-9)
        return f"{(self.done + self.failed) / s:.2f} docs/s · {self.tokens / s:.0f} tok/s"


class PlainProgress:
    """A line per failure and at most one progress line per `every` seconds (logs, pipes)."""

    def __init__(self, console: Console, every: float = 5.0) -> None:
        self.console, self.every, self.tally, self.last = console, every, Tally(), 0.0

    def __call__(self, ev: JobEvent) -> None:
        t = self.tally
        if isinstance(ev, Started):
            self.tally = Tally(ev.name, ev.total - ev.skipped)
            if ev.skipped:
                self._say(f"{ev.name}: resuming: {ev.skipped} documents already done")
        elif isinstance(ev, DocDone):
            t.add(ev)
            if ev.error is not None:
                self._say(f"{t.name}:{ev.line}: id {ev.id}: failed: {ev.error}")
            if time.monotonic() - self.last >= self.every:
                self.last = time.monotonic()
                self._say(f"{t.done + t.failed}/{t.total} · {t.rates()} · {t.failed} failed")
        else:
            self._say(_final(t.name, ev.summary))

    def _say(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)


class BarProgress:
    """A rich progress bar on a terminal; failures are printed above it as they happen."""

    def __init__(self, console: Console) -> None:
        self.console, self.tally = console, Tally()
        self.bar = Bar(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rates]} · {task.fields[failed]} failed"),
            TimeRemainingColumn(), console=console, transient=True,
        )  # fmt: skip
        self.task = self.bar.add_task("documents", total=None, rates="", failed=0, start=False)

    def __call__(self, ev: JobEvent) -> None:
        if isinstance(ev, Started):
            self.tally = Tally(ev.name, ev.total - ev.skipped)
            if ev.skipped:
                self.console.print(f"{ev.name}: resuming: {ev.skipped} documents already done",
                                   markup=False, highlight=False)  # fmt: skip
            self.bar.update(self.task, total=self.tally.total)
            self.bar.start_task(self.task)
            self.bar.start()
        elif isinstance(ev, DocDone):
            self.tally.add(ev)
            if ev.error is not None:
                self.bar.console.print(f"{self.tally.name}:{ev.line}: id {ev.id}: failed: "
                                       f"{ev.error}", markup=False, highlight=False)  # fmt: skip
            t = self.tally
            self.bar.update(self.task, completed=t.done + t.failed, rates=t.rates(),
                            failed=t.failed)  # fmt: skip
        else:
            self.bar.stop()
            self.console.print(_final(self.tally.name, ev.summary), markup=False, highlight=False)


def _final(name: str, s: Summary) -> str:
    d = s.as_dict()
    before = f" ({s.failed_before} failed before)" if s.failed_before else ""
    return (
        f"{name}: done {s.done}, failed {s.failed}, skipped {s.skipped}{before} of {s.total} · "
        f"{s.seconds:.1f} s · {d['docs_per_s']} docs/s · {d['tokens_per_s']} tok/s"
    )


def progress_for(console: Console) -> Report:
    """The bar on a terminal, plain lines elsewhere."""
    return BarProgress(console) if console.is_terminal else PlainProgress(console)
