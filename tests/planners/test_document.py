"""The document planner: outline parsing on captured SmolLM2 outputs, the grown plan's shape,
fan-out caps, the fallback, Markdown assembly, and end to end on the embedded model."""

import json
import re
import time
from pathlib import Path

import networkx as nx
import pytest

import parafill
from parafill.backends.engine.weights import ModelNotFound, default_gguf
from parafill.orchestrator.plan import NodeResult, Plan, RunResult, validate
from parafill.orchestrator.scheduler import Scheduler
from parafill.planners.document import (
    DocumentPlanner,
    Outline,
    OutlineError,
    OutlineLimits,
    Section,
    parse_outline,
)

DATA = json.loads((Path(__file__).parent / "data" / "smollm2_outlines.json").read_text())
CAPTURED = DATA["outlines"]
FINAL = [c for c in CAPTURED if c["prompt"] == "final"]
TOC = [c for c in CAPTURED if c["prompt"] == "toc-3to5"]  # the previous prompt


def _clean(text: str) -> str:
    return re.sub(r"[*_`#]+", "", text).lower()


# ---- parsing captured real outputs -------------------------------------------------------


def _parses(case: dict[str, str]) -> bool:
    try:
        parse_outline(case["outline"], topic=case["topic"])
    except OutlineError:
        return False
    return True


def test_final_prompt_parse_rate_on_captured_outputs():
    parsed = sum(_parses(c) for c in FINAL)
    assert len(FINAL) >= 20
    assert parsed / len(FINAL) >= 0.8, f"{parsed}/{len(FINAL)} parsed"


@pytest.mark.parametrize("case", CAPTURED, ids=lambda c: f"{c['prompt']}:{c['topic'][:24]}")
def test_captured_outline_parses_to_a_sane_outline_or_says_why(case):
    limits = OutlineLimits()
    try:
        outline = parse_outline(case["outline"], limits, case["topic"])
    except OutlineError as exc:
        assert re.search(r"usable section|no numbered items", str(exc)), exc
        return
    titles = [s.title for s in outline.sections]
    subs = [t for s in outline.sections for t in s.subsections]
    assert limits.min_sections <= len(titles) <= limits.max_sections
    every = [*titles, *subs]
    keys = [re.sub(r"[^a-z0-9]+", " ", t.lower()).strip() for t in every]
    assert len(set(keys)) == len(keys), "duplicate titles kept"
    framing = {"introduction", "conclusion", "summary", "table of contents"}
    assert not set(keys) & framing, "introduction/conclusion kept as a body section"
    raw = _clean(case["outline"])
    for t in every:
        assert _clean(t) in raw, f"{t!r} is not in the model's text"
        assert 1 <= len(t.split()) <= limits.max_title_words
    at = -1
    for t in titles:  # in the model's order: each title found after the one before
        at = raw.find(_clean(t), at + 1)
        assert at >= 0, f"{t!r} is out of the model's order"


def test_repeating_list_is_cut_and_deduplicated():
    loop = next(c for c in TOC if c["topic"] == "How volcanoes form")
    outline = parse_outline(loop["outline"], topic=loop["topic"])
    assert [s.title for s in outline.sections] == [
        "Origin of volcanoes",
        "Types of volcanoes",
        "Geological processes",
        "Volcanic eruptions",
    ]
    assert any("repeated titles" in n for n in outline.notes)
    assert any("introduction/conclusion" in n for n in outline.notes)


def test_chatter_after_the_list_is_ignored():
    case = next(c for c in TOC if c["topic"] == "How to write a good résumé")
    assert "| Section | Title |" in case["outline"]  # a table follows the list in the capture
    outline = parse_outline(case["outline"], topic=case["topic"])
    assert [s.title for s in outline.sections] == [
        "What to include in a resume",
        "What to avoid in a resume",
    ]


def test_markdown_heading_outline_with_a_title_root_is_promoted():
    case = next(
        c
        for c in CAPTURED
        if c["prompt"] == "markdown-headings" and c["topic"] == "Why sleep matters"
    )
    outline = parse_outline(case["outline"], topic=case["topic"])
    assert outline.sections[0].title == "The Impact of Sleep on Physical Health"
    assert any("max_sections=5" in n for n in outline.notes)


# ---- parsing formats and hierarchy (hand-written in the shapes models use) ----------------

NESTED = {
    "dotted": "1. Soil\n   1.1 Testing soil\n   1.2 Adding compost\n2. Planting\n   2.1 Seeds\n",
    "headings": "# Gardening\n\n## Soil\n\n### Testing soil\n\n### Adding compost\n\n## Planting\n"
    "\n### Seeds\n",
    "bullets": "- Soil\n  - Testing soil\n  - Adding compost\n- Planting\n  - Seeds\n",
    "numbers+bullets": "1. **Soil**\n- Testing soil\n- Adding compost\n2. **Planting**\n- Seeds\n",
    "sections": "Section 1: Soil\n  a) Testing soil\n  b) Adding compost\nSection 2: Planting\n"
    "  a) Seeds\n",
}


@pytest.mark.parametrize("text", NESTED.values(), ids=NESTED.keys())
def test_nested_formats_give_sections_and_subsections(text):
    outline = parse_outline(text, topic="Gardening")
    assert outline.sections == (
        Section("Soil", ("Testing soil", "Adding compost")),
        Section("Planting", ("Seeds",)),
    )
    assert outline.listing() == (
        "1. Soil\n   1.1 Testing soil\n   1.2 Adding compost\n2. Planting\n   2.1 Seeds"
    )


def test_broken_outlines_raise_with_the_reason():
    with pytest.raises(OutlineError, match="no numbered items, bullets or headings"):
        parse_outline("Gardening is a wonderful hobby that many people enjoy.")
    with pytest.raises(OutlineError, match=r"1 usable section\(s\), need at least 2"):
        parse_outline("1. Introduction\n2. Soil\n3. Conclusion")
    with pytest.raises(OutlineError, match="longer than 12 words"):
        parse_outline("1. " + "word " * 20 + "\n2. " + "other " * 20)


# ---- caps ----------------------------------------------------------------------------------


def test_caps_keep_the_first_items_and_say_so():
    text = "\n".join(
        f"{k}. Part {k}\n   {k}.1 A{k}\n   {k}.2 B{k}\n   {k}.3 C{k}" for k in range(1, 9)
    )
    outline = parse_outline(text, OutlineLimits(max_sections=3, max_subsections=2))
    assert [s.title for s in outline.sections] == ["Part 1", "Part 2", "Part 3"]
    assert all(len(s.subsections) == 2 for s in outline.sections)
    assert "outline had 8 sections; kept the first 3 (max_sections=3)" in outline.notes
    assert "dropped 3 subsections beyond max_subsections=2" in outline.notes


def test_depth_cap_drops_deeper_items_with_a_note():
    text = "1. Soil\n   1.1 Testing\n      1.1.1 pH strips\n2. Planting\n   2.1 Seeds\n"
    two = parse_outline(text)
    assert two.sections == (Section("Soil", ("Testing",)), Section("Planting", ("Seeds",)))
    assert "dropped 1 items deeper than max_depth=2" in two.notes
    one = parse_outline(text, OutlineLimits(max_depth=1))
    assert one.sections == (Section("Soil"), Section("Planting"))
    assert "dropped 3 items deeper than max_depth=1" in one.notes


def test_invalid_limits_are_refused_clearly():
    with pytest.raises(ValueError, match="max_depth is 3"):
        OutlineLimits(max_depth=3)
    with pytest.raises(ValueError, match="max_sections 1 < min_sections 2"):
        OutlineLimits(max_sections=1)


# ---- the grown plan ------------------------------------------------------------------------

OUTLINE = Outline((Section("Soil", ("Testing soil", "Adding compost")), Section("Planting")))


def _grown(planner: DocumentPlanner, text: str, topic: str = "Gardening") -> Scheduler:
    sched = Scheduler(planner.plan(topic))
    sched.start("outline")
    sched.finish(NodeResult("outline", text, 1, 0.0))
    outline = sched.plan.node("outline")
    sched.grow(planner.expanders["outline"](outline, text))  # as the runner does; validates
    return sched


def test_grown_plan_shape():
    text = " Soil\n   1.1 Testing soil\n   1.2 Adding compost\n2. Planting"
    sched = _grown(DocumentPlanner(), text)
    plan = sched.plan
    bodies = ["1.1-testing-soil", "1.2-adding-compost", "2-planting"]
    assert plan.answer == ("intro", *bodies, "conclusion")
    assert all(plan.node(b).deps == () for b in bodies)  # sections never wait for each other
    assert plan.node("sum-1").deps == ("1.1-testing-soil", "1.2-adding-compost")
    assert plan.node("sum-2").deps == ("2-planting",)
    for frame in ("intro", "conclusion"):
        assert plan.node(frame).deps == ("sum-1", "sum-2")
    graph = validate(plan)
    assert set(bodies) <= nx.ancestors(graph, "intro")  # written after the body
    assert [n.id for n in sched.ready()] == bodies  # all bodies start together
    assert sched.notes == ["outline: 2 sections, 2 subsections"]


def test_body_prompts_share_everything_but_the_part_name():
    plan = _grown(DocumentPlanner(), " Soil\n2. Planting\n3. Watering").plan
    prompts = [plan.node(i).prompt for i in plan.answer[1:-1]]
    shared = prompts[0][: -len("1 Soil")]
    assert [p[len(shared) :] for p in prompts] == ["1 Soil", "2 Planting", "3 Watering"]
    assert "1. Soil\n2. Planting\n3. Watering" in shared  # the whole outline comes first
    frames = [plan.node(i).prompt for i in ("intro", "conclusion")]
    assert frames[0].split("Write the")[0] == frames[1].split("Write the")[0]


def test_unparseable_outline_falls_back_with_a_note():
    broken = next(c for c in TOC if c["topic"] == "Why cats purr")
    sched = _grown(
        DocumentPlanner(direct_tokens=33),
        broken["outline"][len("Table of contents:\n\n1.") :],
        topic="Why cats purr",
    )
    assert sched.plan.answer == ("direct",)
    assert sched.plan.node("direct").max_tokens == 33
    assert sched.notes == [
        "outline did not parse (1 usable section(s), need at least 2 "
        "(dropped 4 repeated titles)); answered directly"
    ]


# ---- Markdown ------------------------------------------------------------------------------


def _result(plan: Plan, texts: dict[str, str]) -> RunResult:
    results = {i: NodeResult(i, t, 5, 0.1) for i, t in texts.items()}
    return RunResult("", results, plan, 1.0)


def test_markdown_puts_intro_first_and_parts_in_outline_order():
    planner = DocumentPlanner()
    out = " Soil\n   1.1 Testing soil\n   1.2 Adding compost\n2. Planting"
    plan = _grown(planner, out).plan
    # completion order: bodies, summaries, then the frames; the intro last of all
    texts = {
        "outline": out,
        "2-planting": " in rows.",
        "1.2-adding-compost": " helps.",
        "1.1-testing-soil": "\n\n## 1.1 Testing soil\nUse a kit.",
        "conclusion": " soil comes first.",
        "intro": " covers soil and planting.",
    }
    md = planner.markdown(_result(plan, texts))
    assert md == (
        "# Gardening\n\n## Introduction\n\nThis article covers soil and planting.\n\n"
        "## 1. Soil\n\n### 1.1 Testing soil\n\nUse a kit.\n\n"
        "### 1.2 Adding compost\n\nAdding compost helps.\n\n"
        "## 2. Planting\n\nPlanting in rows.\n\n## Conclusion\n\nIn conclusion, soil comes first.\n"
    )


def test_markdown_of_a_partial_run_keeps_what_was_written():
    planner = DocumentPlanner()
    out = " Soil\n2. Planting"
    plan = _grown(planner, out).plan
    md = planner.markdown(_result(plan, {"outline": out, "1-soil": " is alive."}))
    assert "## 1. Soil\n\nSoil is alive." in md
    assert md.count("_(not written: the run stopped before this part)_") == 3


# ---- end to end on the embedded SmolLM2 ----------------------------------------------------


@pytest.fixture(scope="module")
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
async def backend():
    try:
        default_gguf()
    except ModelNotFound as exc:
        pytest.skip(str(exc))
    async with parafill.LocalBackend.open(parafill.LocalConfig(budget_tokens=8192)) as b:
        yield b


@pytest.mark.anyio
async def test_real_document_sections_fill_in_parallel_intro_written_last(backend):
    planner = DocumentPlanner(
        OutlineLimits(max_sections=3, max_depth=1),
        outline_tokens=60,
        section_tokens=20,
        summary_tokens=12,
        frame_tokens=20,
    )
    events: list[tuple[float, object]] = []

    async def record(ev: object) -> None:
        events.append((time.perf_counter(), ev))

    result = await parafill.arun(
        "The history of the bicycle", backend=backend, planner=planner, on_event=record
    )
    outline = planner.outline_of(result)
    assert outline is not None, result.notes
    md = planner.markdown(result)
    headings = [ln for ln in md.splitlines() if ln.startswith("## ")]
    assert headings == [
        "## Introduction",
        *(f"## {k}. {s.title}" for k, s in enumerate(outline.sections, 1)),
        "## Conclusion",
    ]
    bodies = result.plan.answer[1:-1]
    assert len(bodies) == len(outline.sections) >= 2
    started = {e.node: t for t, e in events if isinstance(e, parafill.NodeStarted)}
    finished = {e.result.id: t for t, e in events if isinstance(e, parafill.NodeFinished)}
    assert started["intro"] > max(finished[b] for b in bodies)  # written after the body
    assert max(started[b] for b in bodies) < min(finished[b] for b in bodies)  # in parallel
    assert all(result.results[b].tokens <= 20 for b in bodies)
    assert result.forward_passes < result.tokens  # siblings shared forward passes


@pytest.mark.anyio
async def test_real_outline_cut_to_one_token_falls_back_to_direct(backend):
    planner = DocumentPlanner(outline_tokens=1, direct_tokens=6)
    result = await parafill.arun("Why cats purr", backend=backend, planner=planner)
    assert result.plan.answer == ("direct",)
    assert any(n.startswith("outline did not parse") for n in result.notes)
    assert result.results["direct"].tokens == 6
    assert planner.markdown(result).startswith("# Why cats purr\n\n")


def test_markdown_drops_a_restated_title_line_but_keeps_a_one_line_body():
    planner = DocumentPlanner()
    out = " Soil\n2. Planting"
    plan = _grown(planner, out).plan
    texts = {"outline": out, "1-soil": ": how to test it\n\nSoil is alive.", "2-planting": " is"}
    md = planner.markdown(_result(plan, texts))
    assert "## 1. Soil\n\nSoil is alive.\n\n## 2. Planting\n\nPlanting is\n\n" in md
