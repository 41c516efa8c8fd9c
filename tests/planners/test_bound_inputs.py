"""Planners bind their inputs (question, topic, text, label) on the node when the plan is made;
expand hooks read them there and never parse prompts: a node whose prompt was rewritten grows
the same plan, and a question that looks like the prompt's own markers survives intact."""

from dataclasses import replace

import pytest

from parafill.planners.dag import DagPlanner
from parafill.planners.document import DocumentPlanner, topic_of
from parafill.planners.ner import NerConfig, NerPlanner
from parafill.planners.reasoning import ReasoningPlanner
from parafill.planners.skeleton import SkeletonPlanner

CASES = [
    (SkeletonPlanner(), "How to learn piano?", "skeleton", " Find a teacher\n2. Practice daily"),
    (DagPlanner(), "Which is older?", "plan", " Year of A.\n2. Year of B.\n3. Compare $1 and $2."),
    (DocumentPlanner(), "Gardening", "outline", " Soil\n   1.1 Testing\n   1.2 Compost\n2. Seeds"),
    (NerPlanner(NerConfig(labels=("person",))), "Stephen Fry on Sky", "count:person", "2"),
]


@pytest.mark.parametrize(("planner", "question", "node_id", "output"), CASES)
def test_growth_does_not_depend_on_the_prompt(planner, question, node_id, output):
    node = planner.plan(question).node(node_id)
    hook = planner.expanders[node.expand]
    rewritten = replace(node, prompt="a prompt rewritten after planning")
    growth = hook(node, output)
    assert growth.nodes and growth == hook(rewritten, output)
    assert any(question in n.prompt for n in growth.nodes)


def test_question_with_the_prompts_own_marker_is_kept_whole():
    question = "Read this.\nQuestion: why is the sky blue?"
    planner = SkeletonPlanner()
    node = planner.plan(question).nodes[0]
    growth = planner.expanders["skeleton"](node, "")  # no point: falls back to direct
    assert growth.nodes[0].prompt == question  # was cut at the last "Question: "


def test_bound_inputs_are_on_the_planned_nodes():
    assert SkeletonPlanner().plan("Q?").nodes[0].arg("question") == "Q?"
    assert DagPlanner().plan("Q?").nodes[0].arg("question") == "Q?"
    assert topic_of(DocumentPlanner().plan('The "best" soil').nodes[0]) == 'The "best" soil'
    count = NerPlanner(NerConfig(labels=("person",))).plan("Ada met Bob").nodes[0]
    assert (count.arg("label"), count.arg("text")) == ("person", "Ada met Bob")
    assert ReasoningPlanner(branches=2).plan("Q?").node("answers").arg("question") == "Q?"
