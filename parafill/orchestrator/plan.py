"""Plan, Node and result values, plan validation (networkx) and the JSON boundary (pydantic).

A Plan is a DAG of nodes plus the ids whose outputs form the answer. Plans can grow while
running: a node may name an `expand` hook (looked up by the runner) that turns its output into
a `Growth` (new nodes, a new answer order). Validation errors name the offending node.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import networkx as nx
from pydantic import BaseModel, ConfigDict, Field

from parafill.backends.base import FillStats
from parafill.fillers import FILLERS

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_.:-]+)\s*\}\}")


class PlanError(ValueError):
    """A plan is not a valid DAG. `node` names the offending node when there is one."""

    def __init__(self, message: str, node: str | None = None) -> None:
        super().__init__(message)
        self.node = node


@dataclass(frozen=True)
class Node:
    """One unit of generation. `prompt` may reference dependency outputs as `{{dep_id}}`;
    dependency outputs not referenced there are given to the model as context."""

    id: str
    prompt: str
    deps: tuple[str, ...] = ()
    max_tokens: int = 256
    filler: str | None = None  # "autoregressive" | "ngram" | "jacobi"; None: the backend's
    system: str | None = None
    expand: str | None = None  # name of a Growth hook run on this node's output
    prefix: str = ""  # the answer starts with this text; the model continues it
    temperature: float = 0.0
    stop: tuple[str, ...] = ()  # stop strings (not included in the output)
    seed: int | None = None  # sampling seed for this node (else the run's seed)


@dataclass(frozen=True)
class Plan:
    nodes: tuple[Node, ...]
    answer: tuple[str, ...] = ()  # node ids joined into the answer, in order
    separator: str = "\n\n"
    notes: tuple[str, ...] = ()  # planner decisions (e.g. the router's), kept in the result

    def node(self, node_id: str) -> Node:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)

    def to_json(self) -> str:
        return PlanModel.from_plan(self).model_dump_json(indent=2)

    @staticmethod
    def from_json(text: str) -> Plan:
        plan = PlanModel.model_validate_json(text).to_plan()
        validate(plan)
        return plan


@dataclass(frozen=True)
class Growth:
    """What an expand hook returns: nodes to add, and optionally a new answer order."""

    nodes: tuple[Node, ...] = ()
    answer: tuple[str, ...] | None = None
    note: str | None = None  # e.g. why a planner fell back


@dataclass(frozen=True)
class NodeResult:
    id: str
    text: str
    tokens: int
    seconds: float
    attempts: int = 1
    finish_reason: str | None = None
    logprob: float | None = None  # summed log p of the output's tokens, if the backend has it
    fill: FillStats | None = None  # forward passes, drafted / kept tokens (local engine)

    @property
    def tokens_per_pass(self) -> float | None:
        if self.fill is None or not self.fill.passes:
            return None
        return self.tokens / self.fill.passes


def validate(plan: Plan, *, existing: Iterable[str] = ()) -> nx.DiGraph:
    """Check ids, dependencies and acyclicity. `existing` are ids already known (growth)."""
    if not plan.nodes:
        raise PlanError("plan is empty: it has no nodes")
    known = set(existing)
    graph: nx.DiGraph = nx.DiGraph()
    for n in plan.nodes:
        if not n.id or not n.id.strip():
            raise PlanError("a node has an empty id", node=n.id)
        if n.id in known or graph.has_node(n.id):
            raise PlanError(f"duplicate node id {n.id!r}", node=n.id)
        if n.max_tokens < 1:
            raise PlanError(f"node {n.id!r} has max_tokens {n.max_tokens} (< 1)", node=n.id)
        if n.filler is not None and n.filler not in FILLERS:
            names = ", ".join(FILLERS)
            raise PlanError(f"node {n.id!r} names unknown filler {n.filler!r} ({names})", n.id)
        graph.add_node(n.id)
    ids = set(graph.nodes) | known
    for n in plan.nodes:
        _check_deps(n, ids)
        graph.add_edges_from((d, n.id) for d in n.deps if d not in known)
    _check_acyclic(graph)
    for a in plan.answer:
        if a not in ids:
            raise PlanError(f"answer names unknown node {a!r}", node=a)
    return graph


def _check_deps(n: Node, ids: set[str]) -> None:
    for d in n.deps:
        if d == n.id:
            raise PlanError(f"node {n.id!r} depends on itself", node=n.id)
        if d not in ids:
            raise PlanError(f"node {n.id!r} depends on unknown node {d!r}", node=n.id)
    for ref in PLACEHOLDER.findall(n.prompt):
        if ref not in n.deps:
            raise PlanError(
                f"node {n.id!r} references {{{{{ref}}}}} but does not depend on it", node=n.id
            )


def _check_acyclic(graph: nx.DiGraph) -> None:
    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        return
    path = " -> ".join([str(u) for u, _ in cycle] + [str(cycle[0][0])])
    raise PlanError(f"plan has a cycle: {path}", node=str(cycle[0][0]))


def answer_part(node: Node, text: str) -> str:
    """A finished node's contribution to the answer: its prefilled start, then its text."""
    return f"{node.prefix.rstrip()} {text.strip()}" if node.prefix else text.strip()


def render_prompt(node: Node, outputs: Mapping[str, str]) -> str:
    """Substitute `{{dep}}` placeholders; unreferenced dependency outputs become context."""
    used = set(PLACEHOLDER.findall(node.prompt))
    text = PLACEHOLDER.sub(lambda m: outputs[m.group(1)], node.prompt)
    extra = [d for d in node.deps if d not in used]
    if not extra:
        return text
    context = "\n\n".join(f"[{d}]\n{outputs[d]}" for d in extra)
    return f"Context from earlier steps:\n{context}\n\n{text}"


# ---- JSON boundary -------------------------------------------------------------------------


class NodeModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    prompt: str
    deps: list[str] = Field(default_factory=list)
    max_tokens: int = 256
    filler: str | None = None
    system: str | None = None
    expand: str | None = None
    prefix: str = ""
    temperature: float = 0.0
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None


class PlanModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    nodes: list[NodeModel]
    answer: list[str] = Field(default_factory=list)
    separator: str = "\n\n"
    notes: list[str] = Field(default_factory=list)

    @staticmethod
    def from_plan(plan: Plan) -> PlanModel:
        nodes = [
            NodeModel.model_validate({**_fields(n), "deps": list(n.deps), "stop": list(n.stop)})
            for n in plan.nodes
        ]
        return PlanModel(
            nodes=nodes, answer=list(plan.answer), separator=plan.separator, notes=list(plan.notes)
        )

    def to_plan(self) -> Plan:
        nodes = tuple(
            Node(**{**n.model_dump(), "deps": tuple(n.deps), "stop": tuple(n.stop)})
            for n in self.nodes
        )
        return Plan(nodes, tuple(self.answer), self.separator, tuple(self.notes))


def _fields(n: Node) -> dict[str, object]:
    return {k: getattr(n, k) for k in Node.__dataclass_fields__}


@dataclass(frozen=True)
class RunResult:
    """Outcome of a run: per-node results in completion order, the assembled answer."""

    answer: str
    results: Mapping[str, NodeResult]
    plan: Plan
    seconds: float
    forward_passes: int | None = None
    notes: tuple[str, ...] = ()
    failed: Mapping[str, str] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return sum(r.tokens for r in self.results.values())
