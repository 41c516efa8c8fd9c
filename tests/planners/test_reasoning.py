"""Parallel reasoning: answer extraction (edge cases + captured SmolLM2 branches), the vote,
the join decision (vote vs synthesis), shared prompt prefixes, and one real-model run."""

import json
import re
from pathlib import Path

import pytest

from parafill.backends.engine.weights import ModelNotFound, default_gguf
from parafill.backends.fake import FakeBackend
from parafill.backends.local import LocalBackend, LocalConfig
from parafill.orchestrator.compute import BUILTINS
from parafill.orchestrator.runner import RunFailed, run_plan
from parafill.planners.reasoning import ReasoningPlanner, extract_answer, majority

CAPTURED = json.loads(
    (Path(__file__).parent / "data" / "smollm2_reasoning_branches.json").read_text()
)


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("So we get it. The answer is 42.", "42"),
        ("Adding them gives **42**", "42"),
        ("6 * 7 = 42.", "42"),
        (r"Therefore \boxed{42}", "42"),
        (r"The answer is 40. Hmm, \boxed{42}", "42"),  # boxed beats prose
        ("The answer is 1,000 apples.", "1000"),
        ("The answer is $5.50.", "5.50"),
        ("Answer: 2.5", "2.5"),
        ("The answer is 48.0", "48"),
        ("The answer to this question is Paris.\n\nThe answer is 18 days.", "paris"),
        ("The answer is: Mars, the fourth planet.", "mars"),
        ("100 divided by 4 equals 25.", "25"),
        ("I think 3 dogs have 12 legs", "12"),  # no marker: the last number
        ("Nothing to see here.", None),
        ("The answer is that stress comes from many different things in our lives.", None),
    ],
)
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


def test_majority_counts_ties_and_unanswered():
    vote = majority(["42", None, "41", "42", "41", None])
    assert vote is not None
    assert vote.counts == (("42", 2), ("41", 2)) and vote.winner == "42"  # tie: first seen
    assert vote.unanswered == 2 and vote.total == 6
    assert vote.describe() == "vote over 6 branches: '42' x2, '41' x2; no answer: 2"
    assert majority([None, None]) is None


def test_captured_branches_extract_as_reviewed():
    """24 branch outputs SmolLM2 really wrote (8 questions x 3 approaches, greedy)."""
    got = {c["question"]: [extract_answer(b) for b in c["branches"]] for c in CAPTURED}
    assert got["What is 12 times 4?"] == ["48", "48", "48"]
    assert got["What is the capital of France?"] == ["paris"] * 3  # first claim, not the junk
    assert got["What is 100 divided by 4?"] == ["25", "2.1666666666666667", "25"]
    assert got["How many legs do 3 dogs have?"] == ["1", "3", "3"]
    assert got["How many days are in a leap year?"] == ["19", "19", "12"]
    assert sum(a is not None for answers in got.values() for a in answers) == 24


def _finish(planner: ReasoningPlanner, question: str, texts: list[str]):
    """As the runner does: the `answers` compute node over the branches, then its hook."""
    plan = planner.plan(question)
    node = plan.node("answers")
    outputs = dict(zip(node.deps, texts, strict=True))
    return plan, planner.expanders[node.expand](node, BUILTINS[node.fn](node, outputs))


def test_vote_join_picks_a_winning_branch_and_records_the_tally():
    planner = ReasoningPlanner(branches=3)
    plan, last = _finish(planner, "Q?", ["The answer is 7.", "= 8", "So **7**"])
    assert plan.answer == ("branch-1", "branch-2", "branch-3")
    assert last.nodes == () and last.answer == ("branch-1",)
    assert (
        last.note == "vote over 3 branches: '7' x2, '8' x1; no answer: 0; answer '7' from branch-1"
    )
    assert planner == ReasoningPlanner(branches=3)  # the planner keeps nothing from a run


def test_open_answers_get_a_synthesis_node_over_every_branch():
    planner = ReasoningPlanner(branches=2)
    _, growth = _finish(planner, "Why sleep?", ["It restores the body.", "Memory forms."])
    (join,) = growth.nodes
    assert join.deps == ("branch-1", "branch-2") and growth.answer == ("join",)
    assert "{{branch-1}}" in join.prompt and "{{branch-2}}" in join.prompt
    assert join.prompt.startswith("Question: Why sleep?\n")
    assert growth.note.startswith("synthesis over 2 branches")
    forced = ReasoningPlanner(branches=2, mode="synthesis")
    assert _finish(forced, "Q?", ["The answer is 1.", "The answer is 1."])[1].answer == ("join",)


def test_branches_share_the_prompt_prefix_and_runs_do_not_mix():
    planner = ReasoningPlanner(branches=5, temperature=0.7)
    a, b = planner.plan("What is 2+2?"), planner.plan("What is 3+3?")
    *branches, answers = a.nodes
    prompts = [n.prompt for n in branches]
    shared = prompts[0][: prompts[0].index("Approach")]
    assert shared.startswith("Question: What is 2+2?") and all(
        p.startswith(shared) for p in prompts
    )
    assert len(set(prompts)) == 5 and all(n.temperature == 0.7 for n in branches)
    # the vote is a compute node over every branch; each plan carries its own question
    assert (answers.kind, answers.fn, answers.deps) == ("compute", "answers", a.answer)
    assert answers.arg("question") == "What is 2+2?"
    assert b.node("answers").arg("question") == "What is 3+3?"
    with pytest.raises(ValueError, match=r"branches is 17; it must be 1..16 \(max_branches\)"):
        ReasoningPlanner(branches=17).plan("Q?")


@pytest.mark.anyio
async def test_a_failed_run_leaves_nothing_behind_in_the_planner():
    """Was a leak: each plan() registered a tally that only a finished vote removed."""
    planner = ReasoningPlanner(branches=3)
    fake = FakeBackend(reply=lambda p: "The answer is 7.", delay=0, fail_times={"Approach 2": 1})
    with pytest.raises(RunFailed, match="branch-2"):
        await run_plan(planner.plan("Q?"), fake, expanders=planner.expanders)
    assert set(planner.expanders) == {"reasoning"} and planner == ReasoningPlanner(branches=3)
    before = len(fake.calls)
    result = await run_plan(planner.plan("Q?"), fake, expanders=planner.expanders)  # reusable
    assert result.plan.answer == ("branch-1",) and result.answer == "The answer is 7."
    vote = "vote over 3 branches: '7' x3; no answer: 0; answer '7' from branch-1"
    assert vote in result.notes
    assert result.results["answers"].tokens == 0 and result.tokens == 3 * 4
    assert len(fake.calls) - before == 3  # one request per branch; the vote made none


@pytest.mark.anyio
async def test_real_model_vote_counts_every_branch():
    try:
        default_gguf()
    except ModelNotFound as exc:
        pytest.skip(str(exc))
    planner = ReasoningPlanner(branches=3, mode="vote", branch_tokens=24)
    async with LocalBackend.open(LocalConfig(budget_tokens=4096, rows=8)) as backend:
        result = await run_plan(
            planner.plan("What is 12 times 4?"), backend, expanders=planner.expanders
        )
    (note,) = result.notes
    counts = {a: int(c) for a, c in re.findall(r"'([^']*)' x(\d+)", note)}
    unanswered = int(re.search(r"no answer: (\d+)", note).group(1))
    assert sum(counts.values()) + unanswered == 3
    answers = [extract_answer(result.results[f"branch-{k}"].text) for k in (1, 2, 3)]
    assert counts == {a: answers.count(a) for a in set(answers) if a is not None}
    (winner_id,) = result.plan.answer
    assert extract_answer(result.results[winner_id].text) == max(counts, key=counts.get)
    assert all(result.results[f"branch-{k}"].tokens <= 24 for k in (1, 2, 3))


def test_cli_rejects_bad_join_and_branch_counts_before_loading_a_model():
    from typer.testing import CliRunner

    from parafill.cli import app

    res = CliRunner().invoke(app, ["reason", "Q?", "--join", "median"])
    assert (
        res.exit_code == 2 and "--join must be auto, vote or synthesis, not 'median'" in res.output
    )
    res = CliRunner().invoke(app, ["reason", "Q?", "--branches", "0"])
    assert res.exit_code == 2 and "--branches must be 1..16, not 0" in res.output
