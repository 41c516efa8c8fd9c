"""Plan, Node and result values, the hook types and plan validation (JSON: plan_io.py).

A Plan is a DAG of nodes plus the ids whose outputs form the answer. A node generates text
with the model, or (`kind="compute"`) runs a named pure function over its dependencies'
outputs. Plans can grow while running: a node may name an `expand` hook (an `Expander`,
looked up by the runner) that turns its output into a `Growth`. Errors name the node.
"""

from __future__ import annotations

import re
from collections.abc import (
    Callable,
    Collection,
    Container,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import TYPE_CHECKING

import networkx as nx

from parafill.backends.base import FillStats
from parafill.fillers import FILLERS
from parafill.orchestrator.checks import Fields
from parafill.orchestrator.compute import BUILTINS

if TYPE_CHECKING:  # parafill.constraints imports torch: loaded only when a plan file has one
    from parafill.constraints.spec import Constraint

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_.:-]+)\s*\}\}")
# `{{...}}` that reads like a reference (words, spaces, `. : -`) but is no PLACEHOLDER
_BRACED = re.compile(r"\{\{([^{}\n]*)\}\}")
_NAME_LIKE = re.compile(r"[\w .:-]+")
TEMPERATURES = (0.0, 2.0)  # OpenAI's range
KINDS = ("generate", "compute")
# what `Node.constraint` may be (parafill.constraints.spec): kind, span unit, JSON whitespace
CONSTRAINT_KINDS = ("json_schema", "regex", "grammar", "span")
_CONSTRAINT_OPTIONS = {"unit": ("words", "chars"), "whitespace": ("compact", "flexible")}


class PlanError(ValueError):
    """A plan is not a valid DAG. `node` names the offending node when there is one."""

    def __init__(self, message: str, node: str | None = None) -> None:
        super().__init__(message)
        self.node = node


# field checks of values whose errors name no node (a node's own, once its id is known, do)
_NODE, _PLAN, _GROWTH = (Fields(owner, PlanError) for owner in ("Node", "Plan", "Growth"))


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
    kind: str = "generate"  # "generate": the model writes it; "compute": `fn` computes it
    fn: str | None = None  # compute nodes: the function's name in the runner's registry
    # inputs bound when the plan is made (the question, a label), read by `fn` and `expand`
    args: tuple[tuple[str, str], ...] = ()
    # what the output must look like (a grammar, regex, JSON schema, span of a text); backends
    # that cannot apply it get none (the runner notes it) and the output is parsed as free text
    constraint: Constraint | None = None
    # stop at the first line that repeats an earlier one, numbering aside, and keep the text
    # before it (an outline that started to loop: see orchestrator/repeats.py)
    stop_repeated_line: bool = False

    def __post_init__(self) -> None:
        """Each field's type and form, checked once here (a plan file, a planner, a hook, a
        caller): sequences become tuples, and a bare str is refused (it would be split)."""
        _NODE.text("id", self.id, blank=False)
        check = Fields(f"node {self.id!r}: Node", partial(PlanError, node=self.id))
        for name in ("prompt", "prefix", "kind"):
            check.text(name, getattr(self, name))
        for name in ("filler", "system", "expand", "fn"):  # known names: `validate`
            check.text(name, getattr(self, name), optional=True)
        check.integer("max_tokens", self.max_tokens, 1)
        check.real("temperature", self.temperature)  # its range: `validate`
        check.seed("seed", self.seed)
        check.flag("stop_repeated_line", self.stop_repeated_line)
        set_ = partial(object.__setattr__, self)  # frozen: normalize once, here
        set_("deps", check.texts("deps", self.deps))
        set_("stop", check.texts("stop", self.stop, empty=False))  # servers refuse ""
        set_("args", check.pairs("args", self.args))
        if self.constraint is not None:
            from parafill.constraints.spec import Constraint  # loaded: a constraint exists

            check.instance("constraint", self.constraint, Constraint, "None or a Constraint")

    def arg(self, name: str, default: str | None = None) -> str:
        """The bound input `name`; without a default, a missing one is a PlanError."""
        found = next((v for k, v in self.args if k == name), default)
        if found is None:
            raise PlanError(f"node {self.id!r} has no arg {name!r} (bound when planned)", self.id)
        return found


Expander = Callable[[Node, str], "Growth"]  # (node, its output) -> what to add to the plan
# (node, its dependencies' outputs by id, in `deps` order) -> the node's output; pure
Compute = Callable[[Node, Mapping[str, str]], str]


@dataclass(frozen=True)
class Plan:
    nodes: tuple[Node, ...]
    answer: tuple[str, ...] = ()  # node ids joined into the answer, in order
    separator: str = "\n\n"
    notes: tuple[str, ...] = ()  # planner decisions (e.g. the router's), kept in the result

    def __post_init__(self) -> None:
        set_ = partial(object.__setattr__, self)  # frozen: normalize once, here
        set_("nodes", _PLAN.items("nodes", self.nodes, Node, "Node"))
        set_("answer", _PLAN.texts("answer", self.answer))
        _PLAN.text("separator", self.separator)
        set_("notes", _PLAN.texts("notes", self.notes))

    def node(self, node_id: str) -> Node:
        return self._index[node_id]

    @cached_property
    def _index(self) -> dict[str, Node]:
        # built on first lookup (plans are frozen, so it never goes stale); O(1) per lookup
        return {n.id: n for n in self.nodes}

    def to_json(self) -> str:
        from parafill.orchestrator.plan_io import PlanModel  # the JSON boundary (pydantic)

        return PlanModel.from_plan(self).model_dump_json(indent=2)

    @staticmethod
    def from_json(text: str, computes: Collection[str] = BUILTINS) -> Plan:
        """A plan file; its compute nodes may name the functions in `computes` only."""
        from parafill.orchestrator.plan_io import PlanModel

        plan = PlanModel.model_validate_json(text).to_plan()
        check_plan(plan)
        check_placeholders(plan.nodes)
        check_computes(plan.nodes, computes)
        return plan


@dataclass(frozen=True)
class Growth:
    """What an expand hook returns: nodes to add, and optionally a new answer order."""

    nodes: tuple[Node, ...] = ()
    answer: tuple[str, ...] | None = None
    note: str | None = None  # e.g. why a planner fell back

    def __post_init__(self) -> None:
        set_ = partial(object.__setattr__, self)
        set_("nodes", _GROWTH.items("nodes", self.nodes, Node, "Node"))
        if self.answer is not None:
            set_("answer", _GROWTH.texts("answer", self.answer))
        _GROWTH.text("note", self.note, optional=True)


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
    """Check ids, dependencies and acyclicity. `existing` are ids already known (growth).
    Returns the graph of the plan's nodes (edges dependency -> dependent)."""
    known = existing if isinstance(existing, (set, frozenset)) else set(existing)
    check_plan(plan, known)
    graph: nx.DiGraph = nx.DiGraph()
    graph.add_nodes_from(n.id for n in plan.nodes)
    graph.add_edges_from((d, n.id) for n in plan.nodes for d in n.deps if d not in known)
    return graph


def check_plan(plan: Plan, known: Container[str] = frozenset()) -> None:
    """`validate` without building a graph: time linear in the plan's nodes and edges."""
    if not plan.nodes:
        raise PlanError("plan is empty: it has no nodes")
    _check(plan.nodes, plan.answer, known)


def check_placeholders(nodes: Iterable[Node]) -> None:
    """At load time: a `{{...}}` that reads like a reference but can never be one (`{{my
    node}}`: a space, a non-ASCII letter) is an error, not text left in the prompt. Only plan
    files are checked: a planner's prompts quote the user's question and model output."""
    for n in nodes:
        for m in _BRACED.finditer(n.prompt):
            if _NAME_LIKE.fullmatch(m.group(1).strip()) and not PLACEHOLDER.fullmatch(m[0]):
                raise PlanError(
                    f"node {n.id!r} has placeholder {m[0]}, which can never be filled: a "
                    "placeholder names a dependency whose id is letters, digits and _ . : - "
                    "only (no spaces)",
                    node=n.id,
                )


def check_hooks(nodes: Iterable[Node], hooks: Collection[str]) -> None:
    """Every node's `expand` names one of `hooks` (checked before a run starts, so no node
    runs first, and for grown nodes before they are added)."""
    for n in nodes:
        if n.expand is not None and n.expand not in hooks:
            names = ", ".join(sorted(hooks))
            names = f"registered: {names}" if names else "no hooks are registered"
            raise PlanError(f"node {n.id!r} names expand hook {n.expand!r} ({names})", n.id)


def check_computes(nodes: Iterable[Node], computes: Collection[str]) -> None:
    """Every compute node's `fn` names one of `computes` (checked at load and before a run)."""
    for n in nodes:
        if n.kind == "compute" and n.fn not in computes:
            names = ", ".join(sorted(computes)) or "none"
            raise PlanError(
                f"node {n.id!r} names unknown compute function {n.fn!r} ({names})", n.id
            )


def validate_growth(growth: Growth, known: Container[str]) -> None:
    """Check a growth against the ids of a running plan, in time linear in the growth alone.

    New nodes may depend on known or other new nodes, and known nodes never depend on new
    ones, so a cycle can only lie among the new nodes: only they are searched. An empty growth
    (a note, a new answer order) is valid.
    """
    _check(growth.nodes, growth.answer or (), known)


def _check(nodes: Sequence[Node], answer: Iterable[str], known: Container[str]) -> None:
    new: dict[str, tuple[str, ...]] = {}  # id -> deps, of the nodes being checked
    for n in nodes:  # each node's fields were checked when it was made (Node.__post_init__)
        if n.id in known or n.id in new:
            raise PlanError(f"duplicate node id {n.id!r}", node=n.id)
        if not TEMPERATURES[0] <= n.temperature <= TEMPERATURES[1]:  # NaN fails too
            lo, hi = TEMPERATURES
            raise PlanError(
                f"node {n.id!r} has temperature {n.temperature:g} (allowed: {lo:g} to {hi:g})", n.id
            )
        if n.filler is not None and n.filler not in FILLERS:
            names = ", ".join(FILLERS)
            raise PlanError(f"node {n.id!r} names unknown filler {n.filler!r} ({names})", n.id)
        _check_kind(n)
        _check_constraint(n)
        new[n.id] = n.deps
    for n in nodes:
        _check_deps(n, new, known)
    if cycle := _find_cycle(new):
        raise PlanError(f"plan has a cycle: {' -> '.join(cycle)}", node=cycle[0])
    for a in answer:
        if a not in new and a not in known:
            raise PlanError(f"answer names unknown node {a!r}", node=a)


def _check_kind(n: Node) -> None:
    if n.kind not in KINDS:
        raise PlanError(f"node {n.id!r} has kind {n.kind!r} (allowed: {', '.join(KINDS)})", n.id)
    if n.kind == "compute" and not n.fn:
        raise PlanError(f"compute node {n.id!r} names no function (fn)", node=n.id)
    if n.kind != "compute" and n.fn is not None:
        raise PlanError(f"node {n.id!r} names fn {n.fn!r} but is not a compute node", n.id)


def _check_constraint(n: Node) -> None:
    """The constraint's kind and options; whether it compiles is known when the node runs."""
    c = n.constraint
    if c is None:
        return
    if n.kind == "compute":
        raise PlanError(f"compute node {n.id!r} has a constraint (it generates nothing)", n.id)
    if c.kind not in CONSTRAINT_KINDS:
        names = ", ".join(CONSTRAINT_KINDS)
        raise PlanError(f"node {n.id!r} has constraint kind {c.kind!r} (allowed: {names})", n.id)
    for name, allowed in _CONSTRAINT_OPTIONS.items():
        if (value := getattr(c, name)) not in allowed:
            raise PlanError(
                f"node {n.id!r} has constraint {name} {value!r} (allowed: {', '.join(allowed)})",
                n.id,
            )
    if not c.source.strip():
        raise PlanError(f"node {n.id!r} has a constraint with an empty source", n.id)


def _check_deps(n: Node, new: Container[str], known: Container[str]) -> None:
    for d in n.deps:
        if d == n.id:
            raise PlanError(f"node {n.id!r} depends on itself", node=n.id)
        if d not in new and d not in known:
            raise PlanError(f"node {n.id!r} depends on unknown node {d!r}", node=n.id)
    for ref in PLACEHOLDER.findall(n.prompt):
        if ref not in n.deps:
            raise PlanError(
                f"node {n.id!r} references {{{{{ref}}}}} but does not depend on it", node=n.id
            )


def _find_cycle(deps: Mapping[str, Sequence[str]]) -> list[str]:
    """A cycle among `deps`' keys as [u, v, ..., u], each depended on by the next; [] if none.
    Iterative depth-first search (a 100k-node chain must not hit the recursion limit)."""
    state: dict[str, bool] = {}  # True: on the search path; False: finished, on no cycle
    for root in deps:
        if root in state:
            continue
        state[root] = True
        path: list[tuple[str, Iterator[str]]] = [(root, iter(deps[root]))]
        while path:
            node, todo = path[-1]
            d = next((d for d in todo if d in deps and state.get(d) is not False), None)
            if d is None:
                state[node] = False
                path.pop()
            elif state.get(d):  # d is on the path: d -> ... -> node -> d, reversed below
                ids = [i for i, _ in path]
                loop = ids[ids.index(d) :][::-1]
                return [*loop, loop[0]]
            else:
                state[d] = True
                path.append((d, iter(deps[d])))
    return []


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


@dataclass(frozen=True)
class RunResult:
    """Outcome of a run: per-node results in plan order, the assembled answer."""

    answer: str
    results: Mapping[str, NodeResult]
    plan: Plan
    seconds: float
    forward_passes: int | None = None
    notes: tuple[str, ...] = ()
    failed: Mapping[str, str] = field(default_factory=dict)
    cancelled: tuple[str, ...] = ()  # nodes a failure stopped (running or never started)

    @property
    def tokens(self) -> int:
        return sum(r.tokens for r in self.results.values())
