"""Node.constraint: validated with the plan (a bad kind or option is a PlanError naming the node),
round-tripped through plan JSON; the runner sends it to a backend that constrains, and drops it
for one that cannot, with one note at the end of the result (fake backends: orchestration
only). A constraint the grammar library refuses fails its node with the library's reason (real
model)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from parafill import constraints as C
from parafill.backends.base import Capabilities, Chunk, Request
from parafill.backends.engine.weights import ModelNotFound, default_gguf
from parafill.backends.fake import FakeBackend
from parafill.orchestrator.plan import Growth, Node, Plan, PlanError, check_plan
from parafill.orchestrator.runner import UNCONSTRAINED, RunFailed, run_plan

pytestmark = pytest.mark.anyio
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


def _file(constraint: object) -> str:
    return json.dumps({"nodes": [{"id": "n", "prompt": "p", "constraint": constraint}]})


@pytest.mark.parametrize(
    "constraint",
    [
        C.regex(r"[0-9]{1,3}"),
        C.grammar('start: "yes" | "no"'),
        C.json_schema(SCHEMA, whitespace="flexible"),
        C.span_of("Barack Obama visited Paris", stop="\n", unit="chars"),
    ],
)
def test_every_kind_round_trips_through_plan_json(constraint: C.Constraint) -> None:
    plan = Plan((Node("a", "x", constraint=constraint), Node("b", "y", ("a",))))
    again = Plan.from_json(plan.to_json())
    assert again == plan and again.node("a").constraint == constraint
    assert again.node("b").constraint is None


def test_a_plan_file_names_kind_and_source_and_a_schema_may_be_an_object() -> None:
    plan = Plan.from_json(_file({"kind": "regex", "source": "ok|no"}))
    assert plan.node("n").constraint == C.regex("ok|no")
    plan = Plan.from_json(_file({"kind": "json_schema", "source": SCHEMA}))
    assert plan.node("n").constraint == C.json_schema(SCHEMA)  # the same cache key


@pytest.mark.parametrize(
    ("constraint", "message"),
    [
        ({"kind": "ebnf", "source": "x"}, r"node 'n' has constraint kind 'ebnf' \(allowed: json"),
        ({"kind": "span", "source": "t", "unit": "lines"}, r"constraint unit 'lines' \(allowed"),
        ({"kind": "json_schema", "source": "{}", "whitespace": "any"}, "constraint whitespace"),
        ({"kind": "regex", "source": "  "}, "node 'n' has a constraint with an empty source"),
    ],
)
def test_an_invalid_constraint_is_a_plan_error_naming_the_node(
    constraint: dict[str, str], message: str
) -> None:
    with pytest.raises(PlanError, match=message) as err:
        Plan.from_json(_file(constraint))
    assert err.value.node == "n"


def test_a_compute_node_cannot_have_a_constraint() -> None:
    node = Node("c", "", kind="compute", fn="join", constraint=C.regex("x"))
    with pytest.raises(PlanError, match="compute node 'c' has a constraint") as err:
        check_plan(Plan((node,)))
    assert err.value.node == "c"


def test_an_unknown_field_in_a_constraint_is_refused() -> None:
    with pytest.raises(ValueError, match="extra"):
        Plan.from_json(_file({"kind": "regex", "source": "x", "flags": "i"}))


@dataclass
class Recording:
    """Answers "ok" and records each request's constraint by prompt; constrains or not."""

    constrains: bool = False
    seen: dict[str, C.Constraint | None] = field(default_factory=dict)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(batched=True, constrains=self.constrains)

    async def stream(self, request: Request) -> AsyncIterator[Chunk]:
        self.seen[request.messages[-1].content] = request.constraint
        yield Chunk("ok", tokens=1, finish_reason="stop")


def _plan() -> Plan:
    digits = C.regex("[0-9]+")
    nodes = (Node("a", "A", constraint=digits), Node("b", "B"), Node("c", "C", constraint=digits))
    return Plan(nodes, answer=("a", "b", "c"), notes=("planner: three nodes",))


async def test_a_backend_that_constrains_gets_each_nodes_constraint_and_no_note() -> None:
    fake = Recording(constrains=True)
    result = await run_plan(_plan(), fake)
    assert fake.seen == {"A": C.regex("[0-9]+"), "B": None, "C": C.regex("[0-9]+")}
    assert result.notes == ("planner: three nodes",)


async def test_a_backend_that_cannot_gets_none_and_the_result_says_so_once() -> None:
    fake = Recording()
    result = await run_plan(_plan(), fake)
    assert fake.seen == {"A": None, "B": None, "C": None}
    assert result.notes == ("planner: three nodes", UNCONSTRAINED)
    assert "cannot constrain" in UNCONSTRAINED
    assert FakeBackend().capabilities.constrains is False


@dataclass
class RegexOnly(Recording):
    """Constrains, but only regexes (as a server whose request fields take no Lark grammar)."""

    constrains: bool = True

    def applies_constraint(self, constraint: C.Constraint) -> bool:
        return constraint.kind == "regex"


async def test_a_backend_that_applies_some_kinds_gets_those_and_hooks_see_which() -> None:
    hooked: dict[str, C.Constraint | None] = {}

    def look(node: Node, text: str) -> Growth:
        hooked[node.id] = node.constraint
        return Growth(())

    lark = C.grammar('start: "yes" | "no"')
    nodes = (Node("a", "A", constraint=C.regex("[0-9]+"), expand="look"),
             Node("b", "B", constraint=lark, expand="look"))  # fmt: skip
    fake = RegexOnly()
    result = await run_plan(Plan(nodes), fake, expanders={"look": look})
    assert fake.seen == {"A": C.regex("[0-9]+"), "B": None}
    assert hooked == {"a": C.regex("[0-9]+"), "b": None}
    assert result.notes == (UNCONSTRAINED,)


async def test_grown_constrained_nodes_are_noted_once_after_the_growth_notes() -> None:
    def grow(node: Node, text: str) -> Growth:
        kids = tuple(Node(f"k{i}", f"K{i}", constraint=C.regex("x")) for i in range(3))
        return Growth(kids, tuple(k.id for k in kids), note="grew 3")

    plan = Plan((Node("o", "O", expand="grow", constraint=C.regex("o")),))
    result = await run_plan(plan, FakeBackend(delay=0), expanders={"grow": grow})
    assert result.notes == ("grew 3", UNCONSTRAINED)


async def test_no_note_when_no_node_is_constrained() -> None:
    result = await run_plan(Plan((Node("a", "A"),)), Recording())
    assert result.notes == ()


async def test_a_constraint_that_does_not_compile_fails_its_node_with_the_reason() -> None:
    """Real model: the regex compiles only when the node runs, on the model's tokenizer."""
    try:
        default_gguf()
    except ModelNotFound as exc:
        pytest.skip(str(exc))
    from parafill.backends.local import LocalBackend, LocalConfig

    plan = Plan((Node("bad", "Say hi.", max_tokens=4, constraint=C.regex("(ab")),))
    async with LocalBackend.open(LocalConfig(budget_tokens=512, rows=2)) as backend:
        assert backend.capabilities.constrains
        with pytest.raises(RunFailed) as info:
            await run_plan(plan, backend)
    assert info.value.node == "bad"
    assert "cannot compile regex '(ab'" in info.value.error
