"""Pure scheduling state: which nodes are ready, and the state transitions of a run.

No event loop and no I/O here; `runner.py` drives it. Nodes are kept in insertion order, so
`ready()` is deterministic. A plan may grow (`grow`) while it runs; growth is validated
against the nodes already known.
"""

from __future__ import annotations

from dataclasses import replace
from enum import Enum

from parafill.orchestrator.plan import Growth, Node, NodeResult, Plan, answer_part, validate


class Status(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Scheduler:
    def __init__(self, plan: Plan) -> None:
        validate(plan)
        self.plan = plan
        self.status: dict[str, Status] = {n.id: Status.PENDING for n in plan.nodes}
        self.results: dict[str, NodeResult] = {}
        self.errors: dict[str, str] = {}
        self.notes: list[str] = list(plan.notes)

    def ready(self) -> list[Node]:
        """Pending nodes whose dependencies are all done, in plan order."""
        return [
            n
            for n in self.plan.nodes
            if self.status[n.id] is Status.PENDING
            and all(self.status[d] is Status.DONE for d in n.deps)
        ]

    def start(self, node_id: str) -> None:
        self._expect(node_id, Status.PENDING)
        self.status[node_id] = Status.RUNNING

    def finish(self, result: NodeResult) -> None:
        self._expect(result.id, Status.RUNNING)
        self.status[result.id] = Status.DONE
        self.results[result.id] = result

    def fail(self, node_id: str, error: str) -> None:
        self.status[node_id] = Status.FAILED
        self.errors[node_id] = error

    def cancel_unfinished(self) -> list[str]:
        """Mark every pending or running node cancelled; returns their ids."""
        ids = [i for i, s in self.status.items() if s in (Status.PENDING, Status.RUNNING)]
        for i in ids:
            self.status[i] = Status.CANCELLED
        return ids

    def grow(self, growth: Growth) -> None:
        answer = growth.answer if growth.answer is not None else self.plan.answer
        plan = replace(self.plan, nodes=self.plan.nodes + growth.nodes, answer=answer)
        validate(plan)
        self.plan = plan
        self.status.update({n.id: Status.PENDING for n in growth.nodes})
        if growth.note:
            self.notes.append(growth.note)

    def outputs(self) -> dict[str, str]:
        return {i: r.text for i, r in self.results.items()}

    @property
    def running(self) -> list[str]:
        return [i for i, s in self.status.items() if s is Status.RUNNING]

    @property
    def done(self) -> bool:
        """True when nothing is running and nothing more can start."""
        return not self.running and not self.ready()

    @property
    def stuck(self) -> list[str]:
        """Pending nodes that can never run (a dependency failed or was cancelled)."""
        return [i for i, s in self.status.items() if s is Status.PENDING] if self.done else []

    def answer(self) -> str:
        parts = [
            answer_part(self.plan.node(i), self.results[i].text)
            for i in self.plan.answer
            if i in self.results
        ]
        return self.plan.separator.join(parts)

    def _expect(self, node_id: str, status: Status) -> None:
        current = self.status.get(node_id)
        if current is not status:
            now = current.value if current else "unknown"
            raise RuntimeError(f"node {node_id!r} is {now}, not {status.value}")
