"""How the CLI shows a run: a live rich table on a terminal, plain lines when piped.

It consumes runner events only; it never touches the backend or the plan's execution.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from rich.console import Console
from rich.live import Live
from rich.table import Table

from parafill.orchestrator.events import (
    Event,
    NodeFailed,
    NodeFinished,
    NodeStarted,
    NodeText,
    PlanGrew,
)
from parafill.orchestrator.plan import RunResult


@dataclass
class _Row:
    status: str = "waiting"
    text: str = ""
    tokens: int = 0


@dataclass
class RunView:
    console: Console
    live: Live | None = None
    rows: dict[str, _Row] = field(default_factory=dict)

    @staticmethod
    def create(console: Console) -> RunView:
        view = RunView(console)
        if console.is_terminal:
            view.live = Live(view._table(), console=console, refresh_per_second=8, transient=True)
            view.live.start()
        return view

    async def __call__(self, event: Event) -> None:
        self._apply(event)
        if self.live is not None:
            self.live.update(self._table())

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def _apply(self, ev: Event) -> None:
        if isinstance(ev, NodeStarted):
            self.rows.setdefault(ev.node, _Row()).status = "running"
        elif isinstance(ev, NodeText):
            row = self.rows.setdefault(ev.node, _Row())
            row.text += ev.text
        elif isinstance(ev, NodeFinished):
            row = self.rows.setdefault(ev.result.id, _Row())
            row.status, row.tokens, row.text = "done", ev.result.tokens, ev.result.text
            self._line(
                f"[{ev.result.id}] done: {ev.result.tokens} tokens in {ev.result.seconds:.1f} s"
            )
        elif isinstance(ev, NodeFailed):
            self.rows.setdefault(ev.node, _Row()).status = "retrying" if ev.will_retry else "failed"
            self._line(f"[{ev.node}] attempt {ev.attempt} failed: {ev.error}")
        elif isinstance(ev, PlanGrew):
            self._grew(ev)

    def _grew(self, ev: PlanGrew) -> None:
        if ev.note:
            self.console.print(f"[{ev.node}] {ev.note}", markup=False, highlight=False)
        for node, label in zip(ev.added, ev.labels, strict=True):
            self.console.print(f"  {label.rstrip(':')}", markup=False, highlight=False)
            self.rows.setdefault(node, _Row())

    def _line(self, text: str) -> None:
        if self.live is None:
            self.console.print(text, markup=False, highlight=False)

    def _table(self) -> Table:
        table = Table(show_header=True, header_style="bold", expand=True)
        table.add_column("node", no_wrap=True)
        table.add_column("status", no_wrap=True)
        table.add_column("tokens", justify="right")
        table.add_column("text")
        for node, row in self.rows.items():
            tail = row.text.replace("\n", " ")[-80:]
            table.add_row(node, row.status, str(row.tokens or len(row.text.split())), tail)
        return table


def repetition(ids: Sequence[Hashable], n: int = 8) -> float:
    """1 - distinct / total n-grams of a token (or word) sequence: a looping output scores
    high."""
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def summary(result: RunResult) -> str:
    passes = "n/a" if result.forward_passes is None else str(result.forward_passes)
    fills = [r.fill for r in result.results.values() if r.fill is not None]
    drafted = sum(f.drafted for f in fills)
    kept = f" · drafts kept {sum(f.accepted for f in fills)}/{drafted}" if drafted else ""
    return (
        f"nodes {len(result.results)} · tokens {result.tokens} · forward passes {passes}{kept} · "
        f"wall {result.seconds:.2f} s"
    )
