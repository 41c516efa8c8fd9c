"""Compute nodes on the fake backend: a pure function over dependency outputs, scheduled like
any node (order, events, results, references), validated at load, no backend request; the
built-in functions; a raising function fails its node."""

import json

import pytest

from parafill.backends.fake import FakeBackend
from parafill.orchestrator.compute import BUILTINS
from parafill.orchestrator.events import Event, NodeFailed, NodeFinished, NodeStarted, NodeText
from parafill.orchestrator.plan import Growth, Node, Plan, PlanError, validate
from parafill.orchestrator.runner import RunFailed, run_plan

pytestmark = pytest.mark.anyio


class _Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    async def __call__(self, ev: Event) -> None:
        self.events.append(ev)

    def at(self, kind: type, node: str) -> int:
        ids = [_node_of(e) if isinstance(e, kind) else None for e in self.events]
        return ids.index(node)


def _node_of(ev: Event) -> str:
    return ev.result.id if isinstance(ev, NodeFinished) else ev.node  # type: ignore[union-attr]


def _merge_plan(fn: str = "join") -> Plan:
    return Plan(
        (
            Node("a", "A"),
            Node("b", "B"),
            Node("m", "", ("a", "b"), kind="compute", fn=fn, args=(("separator", " | "),)),
            Node("d", "Summarize: {{m}}", ("m",)),
        ),
        answer=("m", "d"),
    )


def _reply(prompt: str) -> str:
    return {"A": "alpha", "B": "beta"}.get(prompt, f"saw [{prompt}]")


async def test_compute_node_runs_after_its_deps_and_feeds_later_nodes_without_a_request():
    fake, rec = FakeBackend(reply=_reply, delay=0), _Recorder()
    result = await run_plan(_merge_plan(), fake, emit=rec)
    assert result.results["m"].text == "alpha | beta"
    assert result.results["m"].tokens == 0 and result.results["m"].fill is None
    assert sorted(c.prompt for c in fake.calls) == ["A", "B", "Summarize: alpha | beta"]
    assert result.answer == "alpha | beta\n\nsaw [Summarize: alpha | beta]"
    # scheduled like any node: after both dependencies, before its dependent; every event
    assert max(rec.at(NodeFinished, "a"), rec.at(NodeFinished, "b")) < rec.at(NodeStarted, "m")
    assert rec.at(NodeStarted, "m") < rec.at(NodeText, "m") < rec.at(NodeFinished, "m")
    assert rec.at(NodeFinished, "m") < rec.at(NodeStarted, "d")
    assert list(result.results) == ["a", "b", "m", "d"]  # plan order


async def test_a_raising_compute_function_fails_its_node_with_a_clear_error():
    def boom(node: Node, inputs: dict[str, str]) -> str:
        raise ZeroDivisionError("no votes")

    fake, rec = FakeBackend(reply=_reply, delay=0), _Recorder()
    with pytest.raises(RunFailed) as err:
        await run_plan(_merge_plan("boom"), fake, computes={"boom": boom}, emit=rec)
    assert err.value.node == "m"
    assert err.value.error == "compute function 'boom' failed: ZeroDivisionError: no votes"
    failed = [e for e in rec.events if isinstance(e, NodeFailed)]
    assert [(e.node, e.attempt, e.will_retry) for e in failed] == [("m", 1, False)]
    assert set(err.value.result.results) == {"a", "b"} and err.value.result.cancelled == ("d",)
    assert len(fake.calls) == 2  # d never ran


async def test_unknown_compute_function_is_refused_before_any_node_runs():
    fake = FakeBackend(delay=0)
    with pytest.raises(PlanError, match=r"node 'm' names unknown compute function 'nope'") as e:
        await run_plan(_merge_plan("nope"), fake)
    assert e.value.node == "m" and fake.calls == []


def test_plan_files_name_built_in_compute_functions_and_round_trip():
    text = _merge_plan("dedupe").to_json()
    merge = json.loads(text)["nodes"][2]
    assert (merge["kind"], merge["fn"], merge["args"]) == (
        "compute",
        "dedupe",
        {"separator": " | "},
    )
    assert Plan.from_json(text) == _merge_plan("dedupe")
    doc = {"nodes": [{"id": "a", "prompt": "x"}, {"id": "v", "kind": "compute", "fn": "vote",
                                                     "deps": ["a"]}]}  # fmt: skip
    assert Plan.from_json(json.dumps(doc)).node("v").prompt == ""
    doc["nodes"][1]["fn"] = "tally"
    with pytest.raises(PlanError, match=r"'v' names unknown compute function 'tally' \(") as e:
        Plan.from_json(json.dumps(doc))
    assert e.value.node == "v" and "join" in str(e.value) and "vote" in str(e.value)
    assert Plan.from_json(json.dumps(doc), computes={"tally"}).node("v").fn == "tally"


def test_compute_node_shape_is_validated():
    with pytest.raises(PlanError, match="compute node 'v' names no function"):
        validate(Plan((Node("v", "", kind="compute"),)))
    with pytest.raises(PlanError, match="node 'a' names fn 'join' but is not a compute node"):
        validate(Plan((Node("a", "x", fn="join"),)))
    with pytest.raises(PlanError, match=r"node 'a' has kind 'tool' \(allowed: generate, compute"):
        validate(Plan((Node("a", "x", kind="tool"),)))


async def test_grown_compute_nodes_are_checked_and_run():
    def grow(node: Node, text: str) -> Growth:
        fn = node.arg("fn")
        return Growth((Node("g", "", ("r",), kind="compute", fn=fn),), ("g",))

    ok = Plan((Node("r", "R", expand="grow", args=(("fn", "join"),)),))
    result = await run_plan(ok, FakeBackend(reply=_reply, delay=0), expanders={"grow": grow})
    assert result.answer == "saw [R]" and result.results["g"].tokens == 0
    bad = Plan((Node("r", "R", expand="grow", args=(("fn", "nope"),)),))
    with pytest.raises(RunFailed, match="unknown compute function 'nope'"):
        await run_plan(bad, FakeBackend(delay=0), expanders={"grow": grow})


def test_a_missing_bound_arg_is_a_plan_error_naming_the_node():
    with pytest.raises(PlanError, match="node 'a' has no arg 'question'"):
        Node("a", "x").arg("question")
    assert Node("a", "x").arg("question", "") == ""


def test_built_in_functions():
    node = Node("c", "", kind="compute", fn="join")
    outputs = {"x": " The answer is **Paris**. ", "y": "paris", "z": "Lyon"}
    assert BUILTINS["join"](node, outputs) == "The answer is **Paris**.\n\nparis\n\nLyon"
    assert BUILTINS["vote"](node, outputs) == "paris"
    assert BUILTINS["vote"](node, {"x": "It is 4.", "y": "= 5", "z": "**5**"}) == "5"
    with pytest.raises(ValueError, match="no short answer to vote on in x"):
        BUILTINS["vote"](node, {"x": "A long sentence without any short answer in it at all"})
    lines = {"x": "- Ada\n- Bob\n", "y": "-  ada\n- Cy"}
    assert BUILTINS["dedupe"](node, lines) == "- Ada\n- Bob\n- Cy"
    got = json.loads(BUILTINS["answers"](node, {"b1": "The answer is 7.", "b2": "Maybe 8"}))
    assert got == [
        {"id": "b1", "answer": "7", "marked": True},
        {"id": "b2", "answer": "8", "marked": False},
    ]
