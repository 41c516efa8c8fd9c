"""The planners' grammars (planners/grammars.py) on the SmolLM2 tokenizer: what they accept and
refuse, matching what the free-text parsers read; on the embedded model (greedy, batched),
constrained skeleton / DAG / outline nodes fail to parse only where the model repeats an item
(a grammar cannot forbid that), and every NER mention is a span of its tweet."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from parafill import constraints as C
from parafill.backends.engine.weights import ModelNotFound, default_gguf, resolve
from parafill.backends.local import LocalBackend, LocalConfig
from parafill.orchestrator.plan import Plan
from parafill.orchestrator.runner import RunConfig, run_plan
from parafill.planners.base import Planner
from parafill.planners.dag import DagPlanner, parse_steps
from parafill.planners.document import DocumentPlanner, parse_outline
from parafill.planners.grammars import BAN_CHARS, unbanned_point
from parafill.planners.ner import NerConfig, default_adapter, extract
from parafill.planners.reasoning import ReasoningPlanner
from parafill.planners.skeleton import SkeletonPlanner, _clean, parse_points

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).parents[2]


def _model() -> None:
    try:
        default_gguf()
    except ModelNotFound as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def accepts():  # type: ignore[no-untyped-def]
    _model()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(resolve(None)), local_files_only=True)
    info = C.tokenizer_info(tok)

    def check(c: C.Constraint, text: str) -> bool:
        m = C.compile(c, info).matcher()
        ids = tok.encode(text, add_special_tokens=False)
        return m.accept_prefix(ids) == len(ids) and m.is_accepting()

    return check


def _node(planner: Planner, question: str = "Q?"):  # type: ignore[no-untyped-def]
    return planner.plan(question).nodes[0]


def test_skeleton_grammar_is_2_to_max_points_in_the_parsers_format(accepts) -> None:  # type: ignore[no-untyped-def]
    c = _node(SkeletonPlanner(max_points=4)).constraint
    good = [" Sleep well\n2. Eat well", " A b\n2. C d\n3. E f\n4. G h\n\n"]
    for text in good:
        assert accepts(c, text) and len(parse_points("1." + text)) >= 2
    for bad in [" Only one", " A\n3. B", " A\n2. B\n3. C\n4. D\n5. E", " **A**\n2. B", " \n2. B"]:
        assert not accepts(c, bad), bad


def test_skeleton_continuation_refuses_points_the_parser_reads_as_repeats(accepts) -> None:  # type: ignore[no-untyped-def]
    c = SkeletonPlanner(max_points=4)._skeleton_node("Q?", ("Iron Man",)).constraint
    assert c is not None
    refused = [" Iron Man", " iron man.", " Iron Man: the hero", " Iron Man. He flies"]
    for text in [*refused, " Tony Stark\n3. Iron Man"]:
        assert not accepts(c, text), text  # each parses as "Iron Man" again, at any point
    for text in [" Iron Man's suit", " Tony Stark", " Suits\n3. Wit\n4. Money"]:
        assert accepts(c, text), text
    assert not accepts(c, " Suits\n3. Wit\n4. Money\n5. Jets")  # still at most max_points


def test_continuation_regex_never_admits_a_repeat_and_keeps_distinct_points() -> None:
    """Strings built around the banned points (cut, re-cased, extended with the characters
    the parser strips or cuts at): every one the point regex admits is a point of the plain
    skeleton format that the parser reads as none of the banned ones."""
    banned = ["Iron Man", "Keep a regular schedule", "Exercise", "Exercise daily"]
    banned.append("a b c d e f g h i j k l")  # 12 words: a 13th would be cut off
    point = re.compile(unbanned_point(banned))
    plain = re.compile(r"[A-Za-z0-9][^\n*#`_]{1,70}")
    seen = {b.lower() for b in banned}
    rng = random.Random(0)
    tails = list("abeimnrxAEIMNR .:;-'!?,_") + [". Then", ": x", "s", " and more"]
    admitted = 0
    for _ in range(20000):
        b = rng.choice(banned)
        text = "".join(c.upper() if rng.random() < 0.2 else c for c in b[: rng.randint(0, len(b))])
        text += "".join(rng.choice(tails) for _ in range(rng.randint(0, 4)))
        if point.fullmatch(text):
            admitted += 1
            assert plain.fullmatch(text) and _clean(text).lower() not in seen, text
    assert admitted > 5000  # the grammar is not simply refusing everything
    for text in ["Exercises", "Exercise more", "Iron Man's suit", "Iron Man, the hero", "Keep calm",
                 "a b c d e f g h i j k", "Ex"]:  # fmt: skip
        assert point.fullmatch(text), text


def test_a_long_point_refused_as_a_repeat_still_compiles(accepts) -> None:  # type: ignore[no-untyped-def]
    """A first point of 72 characters: the continuation's grammar compiles (the regex of the
    whole point nested 72 levels deep and llguidance refused it, failing the run). A point over
    BAN_CHARS characters is refused by its first BAN_CHARS: so is any point starting with them."""
    long = "The report is a critical component of the financial analysis, and I'm a"
    short = "Keep a regular schedule"
    c = SkeletonPlanner(max_points=8)._skeleton_node("Q?", (long, short)).constraint
    assert c is not None
    assert not accepts(c, " " + short) and not accepts(c, " " + short.lower() + ".")
    assert accepts(c, " Read the footnotes\n4. Check the totals")
    assert not accepts(c, " " + long) and not accepts(c, " " + long[:BAN_CHARS] + "nother")
    assert accepts(c, " " + long[: BAN_CHARS - 1] + "X and more")


def test_dag_grammar_allows_references_to_earlier_steps_only(accepts) -> None:  # type: ignore[no-untyped-def]
    c = _node(DagPlanner()).constraint
    good = " Find A.\n2. Find B.\n3. Compare $1 and $2.\n\n"
    assert accepts(c, good)
    assert [s.refs for s in parse_steps("1." + good)] == [(), (), (1, 2)]
    for bad in [
        " Use $1.\n2. Find B.",  # its own result
        " Find A.\n2. Use $2.",  # itself
        " Find A.\n2. Use $3.\n3. C",  # a later step
        " Find A.\n2. Use $12.",  # step 12
        " Find A.\n2. Use #E1.",  # another spelling
        " Find A.",  # one step
        " Find A.\n2. Find the year the Eiffel Tower was built.",  # the prompt's example
    ]:
        assert not accepts(c, bad), bad
    assert accepts(c, " Find the price.\n2. Add $1 tax")  # a reference at the end
    assert not accepts(c, " Pay $5 each.\n2. Add $1")  # "$5" would name step 5
    with_amount = _node(DagPlanner(), "Is $5 for 3 pens cheap?").constraint
    assert accepts(with_amount, " Pay $5 each.\n2. Add $1")  # the question's own amount
    assert not accepts(with_amount, " Pay $50 each.\n2. Add $1")
    steps = parse_steps("1. Pay $5 each.\n2. Add $1", literal=["$5"])
    assert [s.refs for s in steps] == [(), (1,)]


def test_dag_continuation_refuses_earlier_steps_and_keeps_references_earlier(accepts) -> None:  # type: ignore[no-untyped-def]
    planner = DagPlanner(max_steps=4)
    kept = parse_steps("1. Find the price of A.\n2. Find the price of B.")
    c = planner._plan_node("Q?", kept).constraint
    assert c is not None
    for text in [" Add $1 and $2.", " Add $1 and $2.\n4. Double $3."]:
        assert accepts(c, text), text
    for text in [" Find the price of B.", " find the price of a.", " Use $3.", " A\n4. B\n5. C"]:
        assert not accepts(c, text), text


def test_outline_grammar_refuses_framing_and_topic_titles(accepts) -> None:  # type: ignore[no-untyped-def]
    planner = DocumentPlanner()
    c = _node(planner, "How bees make honey").constraint
    good = " Nectar\n   1.1 Flowers\n   1.2 Foragers\n2. The hive\n3. Honeycomb\n\n"
    assert accepts(c, good)
    outline = parse_outline(
        "Table of contents:\n\n1." + good, planner.limits, "How bees make honey"
    )
    assert [s.title for s in outline.sections] == ["Nectar", "The hive", "Honeycomb"]
    for bad in [
        " Introduction\n2. The hive",
        " Nectar\n2. Key points",
        " Nectar\n2. How bees make honey",
        " Nectar",
        " Nectar\n2. A\n3. B\n4. C\n5. D\n6. E",
    ]:
        assert not accepts(c, bad), bad


def test_every_outline_grammar_of_the_captured_topics_compiles_and_continues(accepts) -> None:  # type: ignore[no-untyped-def]
    for topic in TOPICS:
        c = _node(DocumentPlanner(), topic).constraint
        assert accepts(c, " Wheels\n2. Frames"), topic
        assert not accepts(c, f" Wheels\n2. {topic}"), topic


def test_ner_count_is_a_number_and_a_mention_a_span_of_the_text(accepts) -> None:  # type: ignore[no-untyped-def]
    from parafill.planners.ner import NerPlanner

    text = "Barack Obama flew to New York"
    count = _node(NerPlanner(), text).constraint
    assert [accepts(count, s) for s in ("0", "3", "12", "two", "123")] == [
        True, True, True, False, False,
    ]  # fmt: skip
    mention = NerPlanner()._expand(_node(NerPlanner(), text), "1").nodes[0].constraint
    assert accepts(mention, "New York") and accepts(mention, "Barack Obama")
    assert not accepts(mention, "Paris") and not accepts(mention, "New Yor")


def test_reasoning_branch_ends_with_the_answer_line_within_its_characters(accepts) -> None:  # type: ignore[no-untyped-def]
    c = ReasoningPlanner(branch_tokens=40).plan("Q?").nodes[0].constraint
    assert c is not None  # 2 * (40 - 24) = 32 characters of reasoning
    for text in ["3 + 4 = 7.\nThe answer is 7", "The answer is 7", "Add them.\n\nThe answer is 7."]:
        assert accepts(c, text), text
    for text in ["3 + 4 = 7.", "The answer is", "x" * 40 + "\nThe answer is 7"]:
        assert not accepts(c, text), text


def test_unconstrained_planners_carry_no_constraint() -> None:
    assert _node(SkeletonPlanner(constrained=False)).constraint is None
    assert _node(DagPlanner(constrained=False)).constraint is None
    assert _node(DocumentPlanner(constrained=False)).constraint is None
    assert _node(ReasoningPlanner(constrained=False)).constraint is None


# ---- the embedded model --------------------------------------------------------------------

MT = [json.loads(x)["turns"][0] for x in (ROOT / "benchmarks/data/mt_bench_first20.jsonl").open()]
DAG = [c["question"] for c in json.loads((DATA / "smollm2_dag_plans.json").read_text())]
TOPICS = [
    c["topic"]
    for c in json.loads((DATA / "smollm2_outlines.json").read_text())["outlines"]
    if c["prompt"] == "final"
]


async def _fallbacks(backend: LocalBackend, planner: Planner, questions: Sequence[str]) -> list:  # type: ignore[type-arg]
    firsts = [_node(planner, q) for q in questions]
    nodes = tuple(replace(n, id=f"q{i}", expand=None) for i, n in enumerate(firsts))
    result = await run_plan(Plan(nodes), backend, RunConfig(max_concurrency=8))
    grown = [
        planner.expanders[n.expand or ""](n, result.results[f"q{i}"].text)
        for i, n in enumerate(firsts)
    ]
    return [(q, g.note) for q, g in zip(questions, grown, strict=True) if g.answer == ("direct",)]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("planner", "questions"),
    [(SkeletonPlanner(), MT[:8]), (DagPlanner(), DAG[:8]), (DocumentPlanner(), TOPICS[:8])],
    ids=["skeleton", "dag", "outline"],
)
async def test_constrained_planning_nodes_fail_only_by_repeating_an_item(
    planner: Planner, questions: list[str]
) -> None:
    _model()
    async with LocalBackend.open(LocalConfig(budget_tokens=8192, rows=8)) as backend:
        failed = await _fallbacks(backend, planner, questions)
    # a grammar cannot forbid an item repeating an earlier one: the only failures left
    assert all("repeat" in note for _, note in failed), failed


@pytest.mark.anyio
async def test_a_skeleton_that_loops_on_its_first_point_is_continued_not_abandoned() -> None:
    _model()
    # greedy SmolLM2 writes "1. He has to go to the hospital every day." eight times
    question = next(q for q in MT if q.startswith("Thomas is very healthy"))
    planner = SkeletonPlanner()
    async with LocalBackend.open(LocalConfig(budget_tokens=4096, rows=8)) as backend:
        result = await run_plan(planner.plan(question), backend, expanders=planner.expanders)
    assert "skeleton-more" in result.results and "direct" not in result.results
    assert result.plan.answer[:2] == ("point-1", "point-2")
    assert not result.failed and all(i in result.results for i in result.plan.answer)
    assert any("repeats refused" in n for n in result.notes)


@pytest.mark.anyio
async def test_every_constrained_reasoning_branch_commits_to_an_answer() -> None:
    _model()
    planner = ReasoningPlanner(branch_tokens=96)
    questions = ["What is 12 times 7?", "Tom has 3 boxes of 4 apples, eats 2. How many are left?"]
    async with LocalBackend.open(LocalConfig(budget_tokens=4096, rows=8)) as backend:
        for q in questions:
            result = await run_plan(planner.plan(q), backend, expanders=planner.expanders)
            branches = [r for i, r in result.results.items() if i.startswith("branch-")]
            ended = [r for r in branches if r.finish_reason != "length"]
            assert ended and all("The answer is " in r.text.splitlines()[-1] for r in ended)


@pytest.mark.anyio
async def test_every_constrained_ner_mention_is_a_span_of_the_tweet() -> None:
    _model()
    tweets = [
        "Engadget : Sky 3D enlists Stephen Fry to explain the technology ahead of its October 1 "
        "launch ( video) : With the of ... http://bit.ly/abRALO",
        "@paulwalk It 's the view from where I 'm living for two weeks . Empire State Building = "
        "ESB . Pretty bad storm here last evening .",
        "Watching the Yankees game with Justin Bieber in Toronto tonight",
    ]
    cfg = LocalConfig(adapter=default_adapter(None), budget_tokens=4096, rows=8)
    async with LocalBackend.open(cfg) as backend:
        for tweet in tweets:
            got = await extract(tweet, backend, NerConfig(labels=("person", "geo-loc", "company")))
            mentions = [r for i, r in got.run.results.items() if i.startswith("mention:")]
            assert all(r.text.strip() and r.text.strip() in tweet for r in mentions), mentions
            assert not [n for n in got.notes if "not in the text" in n]
