"""Pure scheduling state: which nodes are ready, and the state transitions of a run.

No event loop and no I/O here; `runner.py` drives it. Every operation costs time in the nodes
it touches, not in the plan's size: ready-tracking keeps per-node counts of unfinished
dependencies and reverse edges, and growth is validated against the known ids without
re-validating the plan. Plan order does not depend on completion order (see `Key`).
"""

from __future__ import annotations

import sys
from bisect import bisect_right
from dataclasses import replace
from enum import Enum
from heapq import heappop, heappush

from parafill.orchestrator.plan import (
    Growth,
    Node,
    NodeResult,
    Plan,
    answer_part,
    check_plan,
    validate_growth,
)

# A node's place in plan order: (depth, *path). The plan's own nodes are (0, i); the j-th node
# grown by a node keyed (d, *p) is (d + 1, *p, j). Sorting gives the plan's nodes, then each
# growth after those of every growth from a node earlier in plan order (breadth-first): the
# same plan whichever node finished first. Growth with no source node goes last, in call order.
Key = tuple[int, ...]
_ROOT: Key = (-1,)
_UNSOURCED = sys.maxsize // 2


class Status(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Scheduler:
    def __init__(self, plan: Plan) -> None:
        check_plan(plan)
        self._base = plan
        self.status: dict[str, Status] = {}
        self.results: dict[str, NodeResult] = {}
        self.errors: dict[str, str] = {}
        self._nodes: dict[str, Node] = {}
        self._key: dict[str, Key] = {}
        self._blocks: dict[Key, tuple[Node, ...]] = {}  # key of the node that grew them -> nodes
        self._waiting: dict[str, int] = {}  # node -> how many of its dependencies are not done
        self._dependents: dict[str, list[str]] = {}  # reverse edges
        self._ready: set[str] = set()  # pending, every dependency done
        self._queue: list[tuple[Key, str]] = []  # heap of ready nodes (stale entries skipped)
        self._running: dict[str, None] = {}  # insertion-ordered set, in start order
        self._answer: tuple[Key, tuple[str, ...]] = (_ROOT, plan.answer)
        # the plan's notes, then notes added while running (`note`, `grow`) by their node's key
        self.notes: list[str] = list(plan.notes)
        self._note_keys: list[Key] = [_ROOT] * len(plan.notes)
        self._unsourced = 0
        self._plan: Plan | None = None
        self._add(_ROOT, plan.nodes)

    # ---- queries ----------------------------------------------------------------------------

    def ready(self) -> list[Node]:
        """Pending nodes whose dependencies are all done, in plan order."""
        return [self._nodes[i] for i in sorted(self._ready, key=self._key.__getitem__)]

    def node(self, node_id: str) -> Node:
        return self._nodes[node_id]

    def position(self, node_id: str) -> Key:
        """Sort key of a node in plan order (apply results in this order to reproduce runs)."""
        return self._key[node_id]

    def inputs(self, node: Node) -> dict[str, str]:
        """The outputs of `node`'s dependencies (all done once it is ready)."""
        return {d: self.results[d].text for d in node.deps}

    def outputs(self) -> dict[str, str]:
        return {i: r.text for i, r in self.results.items()}

    def in_order(self, *statuses: Status) -> list[str]:
        """Ids of the nodes in any of `statuses`, in plan order."""
        ids = [i for i, s in self.status.items() if s in statuses]
        return sorted(ids, key=self._key.__getitem__)

    @property
    def plan(self) -> Plan:
        """The plan as grown so far, nodes in plan order (built once per growth)."""
        if self._plan is None:
            nodes = tuple(n for k in sorted(self._blocks) for n in self._blocks[k])
            self._plan = replace(self._base, nodes=nodes, answer=self._answer[1])
        return self._plan

    @property
    def running(self) -> list[str]:
        return list(self._running)

    @property
    def active(self) -> int:
        """How many nodes are running."""
        return len(self._running)

    @property
    def done(self) -> bool:
        """True when nothing is running and nothing more can start."""
        return not self._running and not self._ready

    @property
    def stuck(self) -> list[str]:
        """Pending nodes that can never run (a dependency failed or was cancelled)."""
        return self.in_order(Status.PENDING) if self.done else []

    def answer(self) -> str:
        parts = [
            answer_part(self._nodes[i], self.results[i].text)
            for i in self._answer[1]
            if i in self.results
        ]
        return self._base.separator.join(parts)

    # ---- transitions ------------------------------------------------------------------------

    def take(self, limit: int) -> list[Node]:
        """Start up to `limit` ready nodes, the first in plan order, and return them."""
        taken: list[Node] = []
        while self._queue and len(taken) < limit:
            _, i = heappop(self._queue)
            if i in self._ready:
                self.start(i)
                taken.append(self._nodes[i])
        return taken

    def start(self, node_id: str) -> None:
        self._expect(node_id, Status.PENDING)
        self.status[node_id] = Status.RUNNING
        self._ready.discard(node_id)
        self._running[node_id] = None

    def finish(self, result: NodeResult) -> None:
        self._expect(result.id, Status.RUNNING)
        self.status[result.id] = Status.DONE
        self.results[result.id] = result
        del self._running[result.id]
        for d in self._dependents.get(result.id, ()):
            self._waiting[d] -= 1
            if not self._waiting[d] and self.status[d] is Status.PENDING:
                self._make_ready(d)

    def fail(self, node_id: str, error: str) -> None:
        if self.status[node_id] is Status.DONE:  # its dependents wait on it again, for good
            for d in self._dependents.get(node_id, ()):
                self._waiting[d] += 1
                self._ready.discard(d)
        self.status[node_id] = Status.FAILED
        self.errors[node_id] = error
        self._ready.discard(node_id)
        self._running.pop(node_id, None)

    def cancel_unfinished(self) -> list[str]:
        """Mark every pending or running node cancelled; returns their ids in plan order."""
        ids = self.in_order(Status.PENDING, Status.RUNNING)
        for i in ids:
            self.status[i] = Status.CANCELLED
        self._ready.clear()
        self._queue.clear()
        self._running.clear()
        return ids

    def note(self, text: str, node_id: str | None = None) -> None:
        """Add a note, placed by `node_id`'s position (none: after the plan's own notes)."""
        self._insert_note(self._key[node_id] if node_id is not None else _ROOT, text)

    def grow(self, growth: Growth, source: str | None = None) -> None:
        """Add `growth`, produced by node `source`'s output; validated before anything changes.

        Where the new nodes go in plan order, and whether their answer order wins, depends on
        `source`'s position, not on when this is called.
        """
        if source is None:
            self._unsourced += 1
            key: Key = (_UNSOURCED, self._unsourced)
        else:
            key = self._key[source]
            if key in self._blocks:
                raise RuntimeError(f"node {source!r} has already grown the plan")
        validate_growth(growth, self.status)
        if growth.answer is not None and key >= self._answer[0]:
            self._answer = (key, growth.answer)
        if growth.note:
            self._insert_note(key, growth.note)
        self._add(key, growth.nodes)

    # ---- internals --------------------------------------------------------------------------

    def _add(self, source: Key, nodes: tuple[Node, ...]) -> None:
        self._blocks[source] = nodes
        self._plan = None
        head = (source[0] + 1, *source[1:])
        for j, n in enumerate(nodes):
            self._nodes[n.id] = n
            self._key[n.id] = (*head, j)
            self.status[n.id] = Status.PENDING
            for d in n.deps:
                self._dependents.setdefault(d, []).append(n.id)
            waiting = sum(self.status.get(d) is not Status.DONE for d in n.deps)
            self._waiting[n.id] = waiting
            if not waiting:
                self._make_ready(n.id)

    def _make_ready(self, node_id: str) -> None:
        self._ready.add(node_id)
        heappush(self._queue, (self._key[node_id], node_id))

    def _insert_note(self, key: Key, text: str) -> None:
        at = bisect_right(self._note_keys, key)
        self._note_keys.insert(at, key)
        self.notes.insert(at, text)

    def _expect(self, node_id: str, status: Status) -> None:
        current = self.status.get(node_id)
        if current is not status:
            now = current.value if current else "unknown"
            raise RuntimeError(f"node {node_id!r} is {now}, not {status.value}")
