"""LLMCompiler-style planner: numbered steps that use earlier results (`$1`), run as a DAG.

The first node asks the model for steps; its expand hook parses them (`parse_steps`), checks
references, cycles and fan-out, and grows one node per step (deps = the steps it references)
plus a join node that writes the answer. A plan that fails the checks is answered directly,
and the reason goes into the result notes. It does not call tools: every step is the model.
On a backend that applies grammars the plan node is constrained to that format (grammars.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import networkx as nx

from parafill.orchestrator.plan import Expander, Growth, Node, Plan, PlanError

if TYPE_CHECKING:
    from parafill.constraints.spec import Constraint
from parafill.planners.grammars import steps_constraint
from parafill.planners.static import direct_node

# Few-shot examples live in the system message: a Node has no multi-turn history, and a small
# model copies an example placed next to the question far more often.
PLAN_SYSTEM = (
    "You are a planner. You split a question into 2 to 5 numbered steps, one short task per "
    "line. A step that uses an earlier step's result writes $ and its number: $1, $2.\n\n"
    "Question: How far does a car go in 3 hours at 50 km/h, and how long would a bike at "
    "20 km/h take for the same distance?\nSteps:\n"
    "1. Compute the distance for 3 hours at 50 km/h.\n"
    "2. Compute how long a bike at 20 km/h takes to ride $1.\n"
    "3. Report $1 and $2.\n\n"
    "Question: Which is older, the Eiffel Tower or the Statue of Liberty?\nSteps:\n"
    "1. Find the year the Eiffel Tower was built.\n"
    "2. Find the year the Statue of Liberty was built.\n"
    "3. Compare $1 and $2."
)
PLAN_PROMPT = "Question: {question}\nSteps (write $1, $2 where a step uses an earlier result):"
STEP_SYSTEM = "You are a helpful assistant. Do only the step you are given, in 1~2 sentences."
JOIN_SYSTEM = "You are a helpful assistant."

# `$1`, `${1}`; `#E1` / `$E1` are the ReWOO/LLMCompiler spellings. `$1.50` / `$1,000` are money.
_REF = re.compile(r"\$\{\s*(\d{1,3})\s*\}|[$#]E(\d{1,3})\b|\$(\d{1,3})(?![\d.,]\d)")
_STEP = re.compile(r"^\s*(?:[*_#>]+\s*)?(?:step\s*)?(\d{1,3})\s*[.):]\s*(.*)$", re.I)
_MARKUP = re.compile(r"[*_`]+")


@dataclass(frozen=True)
class Step:
    """One planned step: its number as written, the task text, the steps it references."""

    index: int
    text: str
    refs: tuple[int, ...] = ()

    @property
    def id(self) -> str:
        return f"step-{self.index}"


def parse_steps(
    text: str, *, literal: Sequence[str] = (), max_steps: int = 8, max_depth: int = 5
) -> list[Step]:
    """Steps from a model's numbered list, validated. `literal` are `$n` strings that are text,
    not references (e.g. prices copied from the question). Raises PlanError naming the step."""
    steps = _read_steps(text, frozenset(literal))
    if not steps:
        raise PlanError("no numbered steps found (expected lines like '1. Find ...')")
    if len(steps) > max_steps:
        raise PlanError(f"plan has {len(steps)} steps; the cap is {max_steps} (max_steps)")
    validate_steps(steps, max_depth=max_depth)
    return steps


def _read_steps(text: str, literal: frozenset[str]) -> list[Step]:
    steps: list[Step] = []
    for line in text.splitlines():
        m = _STEP.match(line)
        if m is None:
            continue  # prose around the list, sub-bullets: not steps
        body = _MARKUP.sub("", m.group(2)).strip()
        steps.append(Step(int(m.group(1)), body, _refs(body, literal)))
    if steps and not steps[-1].text:
        steps.pop()  # "8." with nothing after it: the generation was cut off there
    return steps


def _refs(body: str, literal: frozenset[str]) -> tuple[int, ...]:
    found: list[int] = []
    for m in _REF.finditer(body):
        if m.group(0) in literal:
            continue
        k = int(next(g for g in m.groups() if g is not None))
        if k not in found:
            found.append(k)
    return tuple(found)


def validate_steps(
    steps: Sequence[Step], *, max_depth: int = 5, allow_forward: bool = False
) -> None:
    """Empty or repeated steps, duplicate numbers, unknown / self / forward references,
    cycles (possible only with `allow_forward`) and chains deeper than `max_depth`."""
    seen: dict[int, Step] = {}
    for s in steps:
        if not s.text:
            raise PlanError(f"step {s.index} is empty", node=s.id)
        if s.index in seen:
            raise PlanError(f"step {s.index} appears twice", node=s.id)
        if twin := next((t for t in seen.values() if t.text.lower() == s.text.lower()), None):
            raise PlanError(f"step {s.index} repeats step {twin.index}: {s.text!r}", node=s.id)
        seen[s.index] = s
    for pos, s in enumerate(steps):
        earlier = {t.index for t in steps[:pos]}
        for k in s.refs:
            _check_ref(s, k, seen, earlier, allow_forward)
    graph = _graph(steps)
    _check_cycle(graph)
    _check_depth(graph, max_depth)


def _check_ref(
    s: Step, k: int, seen: Mapping[int, Step], earlier: set[int], allow_forward: bool
) -> None:
    if k == s.index:
        raise PlanError(f"step {s.index} references its own result ${k}", node=s.id)
    if k not in seen:
        raise PlanError(f"step {s.index} references ${k}, but there is no step {k}", node=s.id)
    if k not in earlier and not allow_forward:
        raise PlanError(f"step {s.index} references ${k}, a step that comes after it", node=s.id)


def _graph(steps: Sequence[Step]) -> nx.DiGraph:
    graph: nx.DiGraph = nx.DiGraph()
    graph.add_nodes_from(s.index for s in steps)
    graph.add_edges_from((k, s.index) for s in steps for k in s.refs)
    return graph


def _check_cycle(graph: nx.DiGraph) -> None:
    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        return
    path = " -> ".join(f"step {u}" for u, _ in cycle) + f" -> step {cycle[0][0]}"
    raise PlanError(f"steps form a cycle: {path}", node=f"step-{cycle[0][0]}")


def _check_depth(graph: nx.DiGraph, max_depth: int) -> None:
    depth: dict[int, int] = {}
    for k in nx.topological_sort(graph):
        depth[k] = 1 + max((depth[d] for d in graph.predecessors(k)), default=0)
        if depth[k] > max_depth:
            raise PlanError(
                f"step {k} sits {depth[k]} steps deep; the cap is {max_depth} (max_depth)",
                node=f"step-{k}",
            )


def step_nodes(
    question: str, steps: Sequence[Step], step_tokens: int, join_tokens: int
) -> tuple[Node, ...]:
    """One node per step (deps = its references, results bound to `$k` via `{{step-k}}`),
    then the join node that depends on every step. Prompts start with the question so every
    step shares one prefix."""
    nodes = [
        Node(
            s.id,
            _step_prompt(question, s),
            deps=tuple(f"step-{k}" for k in s.refs),
            max_tokens=step_tokens,
            filler="ngram",  # drafts from the question and earlier results in the prompt
            system=STEP_SYSTEM,
            stop=("\n\n",),
        )
        for s in steps
    ]
    listing = "\n".join(f"{s.index}. {s.text}\n   Result: {{{{{s.id}}}}}" for s in steps)
    join = (
        f"Question: {question}\n\nThe question was split into steps:\n{listing}\n\n"
        "Using these results, answer the question."
    )
    deps = tuple(s.id for s in steps)
    nodes.append(Node("join", join, deps, join_tokens, "ngram", system=JOIN_SYSTEM))
    return tuple(nodes)


def _step_prompt(question: str, step: Step) -> str:
    bound = "".join(f"${k} = {{{{step-{k}}}}}\n" for k in step.refs)
    given = f"Results of earlier steps:\n{bound}\n" if bound else ""
    return f"Question: {question}\n\n{given}Do only this step: {step.text}"


@dataclass(frozen=True)
class DagPlanner:
    max_steps: int = 8
    max_depth: int = 5
    min_steps: int = 2
    plan_tokens: int = 96
    step_tokens: int = 64
    join_tokens: int = 160
    direct_tokens: int = 512
    constrained: bool = True  # the steps' format as a grammar (backends that apply one)

    def plan(self, question: str) -> Plan:
        return Plan((self._plan_node(question),), answer=())

    def _plan_node(self, question: str, kept: Sequence[Step] = ()) -> Node:
        """The planning node, or (`kept` given) its continuation after those steps: the model
        repeated a step, so the steps before the repeat are prefilled and repeats refused."""
        listing = "".join(f"{s.index}. {s.text}\n" for s in kept)
        return Node(
            "plan" if not kept else "plan-more",
            PLAN_PROMPT.format(question=question),
            max_tokens=self.plan_tokens,
            system=PLAN_SYSTEM,
            expand="dag",
            prefix=f"{listing}{len(kept) + 1}.",  # start the list: else small models write prose
            stop=("\n\n", "Question:"),  # the list ends at the first blank line
            args=(("question", question),),  # bound here: the hook never parses the prompt
            constraint=self._constraint(question, kept),
        )

    def _constraint(self, question: str, kept: Sequence[Step] = ()) -> Constraint | None:
        """Numbered steps, references to earlier steps only (the question's own `$n` amounts
        are text, as in `_expand`), not the example's own steps nor a repeat of `kept`."""
        if not self.constrained:
            return None
        literal = re.findall(r"\$\d+", question)
        banned = sorted({*_EXAMPLE_STEPS, *(s.text for s in kept)})
        first = len(kept) + 1
        return steps_constraint(self.max_steps, self.min_steps, banned, literal, first)

    @property
    def expanders(self) -> Mapping[str, Expander]:
        return {"dag": self._expand}

    def _expand(self, node: Node, text: str) -> Growth:
        question = node.arg("question")
        literal = re.findall(r"\$\d+", question)
        try:
            steps = parse_steps(
                node.prefix + text,
                literal=literal,
                max_steps=self.max_steps,
                max_depth=self.max_depth,
            )
            _check_usable(steps, self.min_steps)
        except PlanError as exc:
            kept = _before_repeat(node.prefix + text, frozenset(literal))
            if kept and node.id == "plan" and node.constraint is not None:
                # a small model repeats a step: ask once more with repeats refused (the hook
                # sees no constraint where the backend could not apply one)
                more = self._plan_node(question, kept)
                note = f"dag plan repeated a step ({exc}); continued with repeats refused"
                return Growth((more,), None, note=note)
            answer = direct_node(question, self.direct_tokens, "direct")
            return Growth(
                (answer,), ("direct",), note=f"dag plan rejected ({exc}); answered directly"
            )
        nodes = step_nodes(question, steps, self.step_tokens, self.join_tokens)
        refs = sum(len(s.refs) for s in steps)
        note = f"dag: {len(steps)} steps, {refs} references"
        return Growth(nodes, ("join",), note=note)


# The example's topic steps; generic ones like "Compare $1 and $2." are fine to reuse.
_EXAMPLE_STEPS = frozenset(
    line.split(". ", 1)[1].lower()
    for line in PLAN_SYSTEM.splitlines()
    if line[:1].isdigit() and "$" not in line
)


def _before_repeat(text: str, literal: frozenset[str]) -> list[Step]:
    """The steps before the first one that repeats an earlier step (none if nothing repeats)."""
    steps = _read_steps(text, literal)
    for pos, s in enumerate(steps):
        if any(t.text.lower() == s.text.lower() for t in steps[:pos]):
            return steps[:pos]
    return []


def _check_usable(steps: Sequence[Step], min_steps: int) -> None:
    if len(steps) < min_steps:
        raise PlanError(f"only {len(steps)} step; at least {min_steps} needed")
    for s in steps:
        if s.text.lower() in _EXAMPLE_STEPS:  # small models sometimes copy the few-shot example
            raise PlanError(f"step {s.index} copies the prompt's example: {s.text!r}", node=s.id)
