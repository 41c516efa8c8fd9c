import pytest

from parafill.orchestrator.plan import Node, Plan, PlanError, render_prompt, validate


def test_empty_plan_is_rejected():
    with pytest.raises(PlanError, match="empty"):
        validate(Plan(()))


def test_cycle_names_a_node_on_it():
    plan = Plan((Node("a", "x", ("c",)), Node("b", "y", ("a",)), Node("c", "z", ("b",))))
    with pytest.raises(PlanError, match="cycle: ") as err:
        validate(plan)
    assert err.value.node in {"a", "b", "c"}
    assert "->" in str(err.value)


def test_unknown_dependency_names_the_node():
    with pytest.raises(PlanError, match="'b' depends on unknown node 'zz'") as err:
        validate(Plan((Node("a", "x"), Node("b", "y", ("zz",)))))
    assert err.value.node == "b"


def test_duplicate_and_self_reference():
    with pytest.raises(PlanError, match="duplicate node id 'a'"):
        validate(Plan((Node("a", "x"), Node("a", "y"))))
    with pytest.raises(PlanError, match="'a' depends on itself"):
        validate(Plan((Node("a", "x", ("a",)),)))


def test_placeholder_must_be_a_dependency():
    with pytest.raises(PlanError, match=r"references \{\{b\}\}"):
        validate(Plan((Node("a", "use {{b}}"), Node("b", "y"))))


def test_answer_must_name_known_nodes():
    with pytest.raises(PlanError, match="answer names unknown node 'q'"):
        validate(Plan((Node("a", "x"),), answer=("q",)))


def test_json_round_trip_and_validation_at_the_boundary():
    plan = Plan(
        (Node("a", "x", max_tokens=7), Node("b", "see {{a}}", ("a",), expand="skeleton")),
        answer=("a", "b"),
    )
    assert Plan.from_json(plan.to_json()) == plan
    bad = plan.to_json().replace('"deps": [\n        "a"\n      ]', '"deps": ["b"]')
    with pytest.raises(PlanError, match="depends on itself"):
        Plan.from_json(bad)


def test_render_prompt_substitutes_and_adds_unreferenced_context():
    node = Node("c", "Combine {{a}} now", ("a", "b"))
    text = render_prompt(node, {"a": "ALPHA", "b": "BETA"})
    assert "Combine ALPHA now" in text
    assert "[b]\nBETA" in text and "[a]" not in text
