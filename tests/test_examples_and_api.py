"""The Python API and the examples, on the embedded SmolLM2 (small budgets)."""

import importlib.util
import sys
from pathlib import Path

import anyio
import pytest

import parafill
from parafill import Node, Plan, RunFailed

pytestmark = pytest.mark.anyio
EXAMPLES = Path(__file__).parent.parent / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
async def backend():
    async with parafill.LocalBackend.open(parafill.LocalConfig(budget_tokens=8192)) as b:
        yield b


@pytest.fixture(scope="module")
def anyio_backend():
    return "asyncio"


async def test_sot_example_streams_and_assembles(capsys):
    # a question whose SmolLM2 skeleton parses (others fall back to a direct answer)
    question = "What are the most effective ways to manage stress?"
    result = await _load("sot_question").main(question, 3, 12)
    printed = capsys.readouterr().out
    assert "skeleton:" in printed and "[point-1]" in printed
    points = [n for n in result.plan.answer if n.startswith("point-")]
    assert points and result.answer.startswith("1. ")
    assert all(result.results[p].tokens <= 12 for p in points)


async def test_hand_built_plan_runs_dependents_after_inputs(backend):
    plan = _load("hand_built_plan").build_plan(tokens=10)
    result = await parafill.arun(plan, backend=backend)
    assert list(result.results)[-1] == "merge"
    assert result.answer == result.results["merge"].text.strip()
    # pros and cons decoded together: fewer forward passes than their tokens
    both = result.results["pros"].tokens + result.results["cons"].tokens
    assert result.forward_passes < both + result.results["merge"].tokens


async def test_unparseable_skeleton_answers_directly_and_says_so(backend):
    planner = parafill.SkeletonPlanner(skeleton_tokens=1, direct_tokens=8)
    result = await parafill.arun("Name a color.", backend=backend, planner=planner)
    assert result.plan.answer == ("direct",)
    assert any("did not parse" in n for n in result.notes)
    assert result.results["direct"].tokens == 8


async def test_failed_node_keeps_finished_results(backend):
    plan = Plan((Node("ok", "Say hi.", max_tokens=4), Node("huge", "x", max_tokens=10**6)))
    with pytest.raises(RunFailed, match="node 'huge' failed: request needs") as err:
        await parafill.arun(plan, backend=backend)
    assert err.value.result.failed["huge"].startswith("request needs")


async def test_stream_cancellation_frees_the_engine(backend):
    plan = Plan((Node("long", "Write a long story about a dragon.", max_tokens=400),))
    with anyio.move_on_after(1.0):
        await parafill.arun(plan, backend=backend)
    with anyio.fail_after(5):
        while backend.engine.live or backend.engine.waiting:
            await anyio.sleep(0.05)


async def test_leaving_stream_early_cancels_the_local_run(backend):
    plan = Plan((Node("long", "Write a long story about a dragon.", max_tokens=400),))
    async with parafill.stream(plan, backend=backend) as events:
        async for ev in events:
            if isinstance(ev, parafill.NodeText) and ev.text:
                steps = backend.engine.steps
                break  # no exception: the run is cancelled
    with anyio.fail_after(60):  # a guard against a hang, not a measurement
        while backend.engine.live or backend.engine.waiting:
            await anyio.sleep(0.05)
    assert backend.engine.steps - steps < 300  # the 400-token story was not decoded to its end


async def test_dag_example_prints_steps_with_their_inputs(capsys):
    question = "What is the total cost of 3 books at 12 dollars each and 2 pens at 3 dollars each?"
    result = await _load("dag_question").main(question, 10, 12)
    printed = capsys.readouterr().out
    grown = result.plan.nodes[1:]
    for node in grown:
        assert f"[{node.id}] uses {', '.join(node.deps) or 'nothing'}:" in printed
    if result.plan.answer == ("join",):  # the plan parsed: the join used every step
        assert result.plan.node("join").deps == tuple(n.id for n in grown[:-1])
    else:  # it did not: the answer came directly and the notes say why
        assert any("answered directly" in n for n in result.notes)


async def test_parallel_reasoning_example_prints_the_vote(capsys):
    result = await _load("parallel_reasoning").main("What is 12 times 4?", 3, 20)
    printed = capsys.readouterr().out
    assert printed.count("[branch-") == 3
    (note,) = result.notes
    assert note in printed and note.startswith(("vote over 3 branches", "synthesis over 3"))


async def test_write_document_example_writes_intro_last_but_first_in_markdown(capsys):
    md = await _load("write_document").main("How bees make honey", 3, 12)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("[outline] ") and printed[1].startswith("outline: 3 sections")
    done = [ln[1 : ln.index("]")] for ln in printed if ln.startswith("[")]
    bodies = [d for d in done if d[0].isdigit()]
    assert len(bodies) == 3 and done.index("intro") > max(done.index(b) for b in bodies)
    headings = [ln for ln in md.splitlines() if ln.startswith("## ")]
    assert headings[0] == "## Introduction" and headings[-1] == "## Conclusion"
    assert [h[3:5] for h in headings[1:-1]] == ["1.", "2.", "3."]


async def test_ner_example_extracts_verbatim_spans(capsys):
    example = _load("ner_tweets")
    results = await example.main(labels=("person", "company", "facility"))
    printed = capsys.readouterr().out
    assert "  parallel " in printed and "  ar " in printed
    texts = [t for t in example.TWEETS for _ in ("parallel", "ar")]
    assert len(results) == len(texts)
    for result, text in zip(results, texts, strict=True):
        assert all(e.text in text and e.label != "geo-loc" for e in result.entities)
    assert ("facility", "Empire State Building") in {(e.label, e.text) for e in results[0].entities}
