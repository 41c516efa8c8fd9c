import pytest

from parafill.orchestrator.plan import Growth, Node, NodeResult, Plan, PlanError
from parafill.orchestrator.scheduler import Scheduler, Status


def _done(s: Scheduler, node_id: str, text: str = "t") -> None:
    s.start(node_id)
    s.finish(NodeResult(node_id, text, 1, 0.0))


def test_ready_respects_dependencies_in_plan_order():
    s = Scheduler(Plan((Node("a", "x"), Node("b", "y", ("a",)), Node("c", "z"))))
    assert [n.id for n in s.ready()] == ["a", "c"]
    _done(s, "a")
    assert [n.id for n in s.ready()] == ["b", "c"]


def test_growth_adds_nodes_and_replaces_answer():
    s = Scheduler(Plan((Node("root", "x"),), answer=("root",)))
    _done(s, "root")
    s.grow(Growth((Node("p1", "a", ("root",)), Node("p2", "b", ("root",))), ("p1", "p2")))
    assert [n.id for n in s.ready()] == ["p1", "p2"]
    assert s.plan.answer == ("p1", "p2")


def test_invalid_growth_is_rejected_and_state_unchanged():
    s = Scheduler(Plan((Node("root", "x"),)))
    _done(s, "root")
    with pytest.raises(PlanError, match="duplicate node id 'root'"):
        s.grow(Growth((Node("root", "again"),)))
    assert list(s.status) == ["root"]


def test_cancel_unfinished_and_double_start():
    s = Scheduler(Plan((Node("a", "x"), Node("b", "y"))))
    s.start("a")
    with pytest.raises(RuntimeError, match="not pending"):
        s.start("a")
    assert s.cancel_unfinished() == ["a", "b"]
    assert s.status["a"] is Status.CANCELLED
