import json

import pytest

from parafill.orchestrator.plan import (
    Node,
    Plan,
    PlanError,
    check_hooks,
    render_prompt,
    validate,
)


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


@pytest.mark.parametrize("temperature", [-1, 2.5, 1e9, float("nan")])
def test_temperature_outside_0_to_2_is_refused_naming_the_node(temperature):
    with pytest.raises(PlanError, match=r"node 'b' has temperature .* \(allowed: 0 to 2\)") as err:
        validate(Plan((Node("a", "x"), Node("b", "y", temperature=temperature))))
    assert err.value.node == "b"


def test_temperature_bounds_are_allowed():
    validate(Plan((Node("a", "x", temperature=0.0), Node("b", "y", temperature=2.0))))


@pytest.mark.parametrize("value", ["-1", "1e9", "2.01"])
def test_plan_json_refuses_a_bad_temperature_naming_the_node(value):
    text = '{"nodes": [{"id": "a", "prompt": "x"}, {"id": "hot", "prompt": "y", "temperature": %s}'
    text += "]}"
    with pytest.raises(PlanError, match="node 'hot' has temperature") as err:
        Plan.from_json(text % value)
    assert err.value.node == "hot"


@pytest.mark.parametrize("ref", ["{{my node}}", "{{ my node }}", "{{café}}"])
def test_plan_json_refuses_a_placeholder_that_cannot_be_a_reference(ref):
    nodes = [{"id": "my node", "prompt": "x"},
             {"id": "b", "prompt": f"use {ref}", "deps": ["my node"]}]
    with pytest.raises(PlanError, match="node 'b' has placeholder") as err:
        Plan.from_json(json.dumps({"nodes": nodes}))
    assert err.value.node == "b"
    assert "letters, digits" in str(err.value)


def test_plan_json_keeps_double_braces_that_are_no_reference():
    prompt = "Explain Jinja's {{ user.name | upper }} and {{}} literally; use {{ a }}"
    plan = Plan.from_json(json.dumps({"nodes": [
        {"id": "a", "prompt": "x"}, {"id": "b", "prompt": prompt, "deps": ["a"]}]}))
    assert "{{ user.name | upper }}" in render_prompt(plan.node("b"), {"a": "A"})


def test_unknown_expand_hook_is_refused_naming_the_node():
    plan = Plan((Node("a", "x", expand="skeleton"), Node("b", "y", expand="nope")))
    check_hooks(plan.nodes, {"skeleton", "nope"})
    check_hooks((Node("c", "z"),), ())  # no expand: nothing to look up
    with pytest.raises(PlanError, match="node 'b' names expand hook 'nope'") as err:
        check_hooks(plan.nodes, {"skeleton": None})
    assert err.value.node == "b"
    with pytest.raises(PlanError, match=r"no hooks are registered"):
        check_hooks(plan.nodes, {})
