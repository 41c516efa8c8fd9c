"""Events a run emits, in order, to the CLI and the Python API's stream."""

from __future__ import annotations

from dataclasses import dataclass

from parafill.orchestrator.plan import NodeResult, RunResult


@dataclass(frozen=True)
class NodeStarted:
    node: str
    attempt: int


@dataclass(frozen=True)
class NodeText:
    node: str
    text: str


@dataclass(frozen=True)
class NodeFinished:
    result: NodeResult


@dataclass(frozen=True)
class NodeFailed:
    node: str
    error: str
    attempt: int
    will_retry: bool


@dataclass(frozen=True)
class PlanGrew:
    node: str
    added: tuple[str, ...]
    note: str | None
    labels: tuple[str, ...] = ()  # what each added node is (its answer prefix, else its id)


@dataclass(frozen=True)
class RunFinished:
    result: RunResult


Event = NodeStarted | NodeText | NodeFinished | NodeFailed | PlanGrew | RunFinished
