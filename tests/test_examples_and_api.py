"""The Python API and the examples, on the embedded SmolLM2 (small budgets, greedy).

The examples' questions were chosen so that SmolLM2's plans parse; each example test fails if
its run fell back to a direct answer instead. Both the parsed and the fallback path of the
planners are also run on the fake backend (scripted replies: orchestration only, no model)."""

import importlib.util
import re
import sys
from pathlib import Path

import anyio
import pytest

import parafill
from parafill import Node, NodeFinished, NodeStarted, Plan, PlanGrew, RunFailed
from parafill.backends.fake import FakeBackend
from parafill.planners.dag import DagPlanner
from parafill.planners.reasoning import extract_answer

pytestmark = pytest.mark.anyio
EXAMPLES = Path(__file__).parent.parent / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class _Recorder:
    """An `on_event` callback keeping every event in emission order."""

    def __init__(self) -> None:
        self.events: list[parafill.Event] = []

    async def __call__(self, ev: parafill.Event) -> None:
        self.events.append(ev)

    def at(self, kind: type, node: str) -> int:
        """Index of the first `kind` (NodeStarted / NodeFinished) event for `node`."""
        for i, ev in enumerate(self.events):
            if isinstance(ev, kind) and (ev.node if kind is NodeStarted else ev.result.id) == node:
                return i
        raise AssertionError(f"no {kind.__name__} for {node!r}")


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
    points = [n.id for n in result.plan.nodes if n.id.startswith("point-")]
    # the skeleton parsed: no direct-answer fallback, and the answer is exactly the points
    assert result.notes == (f"skeleton: {len(points)} points",), result.notes
    assert 2 <= len(points) <= 3 and result.plan.answer == tuple(points)
    assert [n.id for n in result.plan.nodes] == ["skeleton", *points]
    # the example printed the skeleton's labels, then each point as it finished
    labels = [result.plan.node(p).prefix for p in points]
    assert "skeleton:\n" + "".join(f"  {lab}\n" for lab in labels) in printed
    for p in points:
        assert f"[{p}] {result.results[p].tokens} tokens" in printed
        assert result.results[p].tokens <= 12
    parts = result.answer.split("\n\n")
    assert [part.split(" ", 1)[0] for part in parts] == [f"{k}." for k in range(1, len(points) + 1)]
    assert printed.rstrip().endswith(result.answer)


async def test_hand_built_plan_runs_dependents_after_inputs(backend):
    plan = _load("hand_built_plan").build_plan(tokens=10)
    rec = _Recorder()
    result = await parafill.arun(plan, backend=backend, on_event=rec)
    # merge started only after both of its inputs finished; pros and cons ran side by side
    assert rec.at(NodeStarted, "merge") > max(rec.at(NodeFinished, d) for d in ("pros", "cons"))
    started = max(rec.at(NodeStarted, d) for d in ("pros", "cons"))
    assert started < min(rec.at(NodeFinished, d) for d in ("pros", "cons"))
    assert result.answer == result.results["merge"].text.strip()
    # pros and cons decoded together: fewer forward passes than their tokens
    both = result.results["pros"].tokens + result.results["cons"].tokens
    assert result.forward_passes < both + result.results["merge"].tokens


async def test_unparseable_skeleton_answers_directly_and_says_so(backend):
    # one token: one point at most; unconstrained, so no continuation is tried
    planner = parafill.SkeletonPlanner(skeleton_tokens=1, direct_tokens=8, constrained=False)
    result = await parafill.arun("Name a color.", backend=backend, planner=planner)
    assert result.plan.answer == ("direct",)
    assert any("did not parse" in n for n in result.notes)
    assert result.results["direct"].tokens == 8


def _scripted(plan_text: str):
    """Fake backend script: `plan_text` continues a planner's "1." prefill; all else is "ok"."""
    return lambda prompt: plan_text if prompt == "1." else "ok"


SKELETON_PATHS = {
    "parsed": (
        " Exercise daily\n2. Sleep well\n3. Talk to friends",
        ("point-1", "point-2", "point-3"),
        "skeleton: 3 points",
    ),
    "fallback": (
        " Well, it depends on the person.",
        ("direct",),
        "skeleton did not parse (only 1 point); answered directly",
    ),
}


@pytest.mark.parametrize("path", SKELETON_PATHS)
async def test_skeleton_parsed_and_fallback_paths_are_told_apart(path):
    outline, answer, note = SKELETON_PATHS[path]
    rec = _Recorder()
    fake = FakeBackend(reply=_scripted(outline), delay=0.0)
    planner = parafill.SkeletonPlanner()  # always outline (the default router would not)
    result = await parafill.arun("How to relax?", backend=fake, planner=planner, on_event=rec)
    assert result.plan.answer == answer and note in result.notes
    assert [n.id for n in result.plan.nodes] == ["skeleton", *answer]
    (grew,) = [e for e in rec.events if isinstance(e, PlanGrew)]
    assert (grew.node, grew.added, grew.note) == ("skeleton", answer, note)
    for node in answer:  # grown from the skeleton's text: started once it had finished
        assert rec.at(NodeStarted, node) > rec.at(NodeFinished, "skeleton")
    if path == "parsed":
        assert (
            result.answer == "1. Exercise daily: ok\n\n2. Sleep well: ok\n\n3. Talk to friends: ok"
        )
    else:
        assert result.answer == "ok" and "point-1" not in result.results


DAG_PATHS = {
    "parsed": (
        " Find the price of A.\n2. Find the price of B.\n3. Add $1 and $2.",
        ("join",),
        "dag: 3 steps, 2 references",
    ),
    "fallback": (
        " Just add them.",
        ("direct",),
        "dag plan rejected (only 1 step; at least 2 needed); answered directly",
    ),
}


@pytest.mark.parametrize("path", DAG_PATHS)
async def test_dag_parsed_and_fallback_paths_are_told_apart(path):
    steps, answer, note = DAG_PATHS[path]
    rec = _Recorder()
    fake = FakeBackend(reply=_scripted(steps), delay=0.0)
    result = await parafill.arun(
        "Cost of A and B?", backend=fake, planner=DagPlanner(), on_event=rec
    )
    assert result.plan.answer == answer and note in result.notes
    grown = [n.id for n in result.plan.nodes[1:]]
    (grew,) = [e for e in rec.events if isinstance(e, PlanGrew)]
    assert (grew.node, grew.added, grew.note) == ("plan", tuple(grown), note)
    if path == "fallback":
        assert grown == ["direct"] and result.answer == "ok"
        return
    assert grown == ["step-1", "step-2", "step-3", "join"]
    assert result.plan.node("step-3").deps == ("step-1", "step-2")
    # the independent steps ran side by side; step 3 and the join waited for their inputs
    first = ("step-1", "step-2")
    assert max(rec.at(NodeStarted, s) for s in first) < min(rec.at(NodeFinished, s) for s in first)
    assert rec.at(NodeStarted, "step-3") > max(rec.at(NodeFinished, s) for s in first)
    assert rec.at(NodeStarted, "join") > rec.at(NodeFinished, "step-3")
    assert "$1 = ok\n$2 = ok" in next(c.prompt for c in fake.calls if "Add $1" in c.prompt)


async def test_failed_node_keeps_finished_results(backend):
    plan = Plan((Node("ok", "Say hi.", max_tokens=4), Node("huge", "x", max_tokens=10**6)))
    with pytest.raises(RunFailed, match="node 'huge' failed: request needs") as err:
        await parafill.arun(plan, backend=backend)
    assert err.value.result.failed["huge"].startswith("request needs")


async def test_cancelling_arun_frees_the_engine(backend):
    plan = Plan((Node("long", "Write a long story about a dragon.", max_tokens=400),))
    rec = _Recorder()
    at_cancel: list[int] = []
    with anyio.CancelScope() as scope:

        async def cancel_on_first_text(ev: parafill.Event) -> None:
            await rec(ev)
            if isinstance(ev, parafill.NodeText) and ev.text and not at_cancel:
                at_cancel.append(backend.engine.steps)
                scope.cancel()

        await parafill.arun(plan, backend=backend, on_event=cancel_on_first_text)
    assert scope.cancelled_caught and at_cancel  # the run was cut off, not finished
    assert not any(isinstance(e, (NodeFinished, parafill.RunFinished)) for e in rec.events)
    with anyio.fail_after(60):  # a guard against a hang, not a measurement
        while backend.engine.live or backend.engine.waiting:
            await anyio.sleep(0.05)
    assert backend.engine.steps - at_cancel[0] < 300  # the story was not decoded to its end
    # the engine is free for the next run
    after = await parafill.arun(Plan((Node("hi", "Say hi.", max_tokens=4),)), backend=backend)
    assert 0 < after.results["hi"].tokens <= 4


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
    # SmolLM2's plan for this question parses: a direct-answer fallback fails here
    assert result.plan.answer == ("join",), result.notes
    steps = [n for n in result.plan.nodes if n.id.startswith("step-")]
    assert [n.id for n in result.plan.nodes] == ["plan", *(n.id for n in steps), "join"]
    refs = sum(len(n.deps) for n in steps)
    assert result.notes == (f"dag: {len(steps)} steps, {refs} references",)
    assert len(steps) >= 2 and refs >= 1  # some step used an earlier step's result
    assert result.plan.node("join").deps == tuple(n.id for n in steps)  # the join used every step
    for node in result.plan.nodes[1:]:
        assert f"[{node.id}] uses {', '.join(node.deps) or 'nothing'}:" in printed
    assert result.answer == result.results["join"].text.strip()
    assert printed.rstrip().endswith(result.notes[0])


async def test_parallel_reasoning_example_prints_the_vote(capsys):
    result = await _load("parallel_reasoning").main("What is 12 times 4?", 3, 20)
    printed = capsys.readouterr().out
    (note,) = result.notes
    # the branches gave short answers: a vote, not the synthesis fallback
    assert note.startswith("vote over 3 branches: ") and note in printed, note
    answers = [extract_answer(result.results[f"branch-{k}"].text) for k in (1, 2, 3)]
    for k, answer in enumerate(answers, 1):
        assert f"[branch-{k}] answer: {answer}\n" in printed
    counts = {a: int(c) for a, c in re.findall(r"'([^']*)' x(\d+)", note)}
    assert counts == {a: answers.count(a) for a in answers if a is not None}
    winner, winner_id = re.search(r"answer '([^']*)' from (branch-\d)$", note).groups()
    assert counts[winner] == max(counts.values()) and answers[int(winner_id[-1]) - 1] == winner
    assert result.plan.answer == (winner_id,) and "join" not in result.results
    assert result.answer == result.results[winner_id].text.strip()


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
