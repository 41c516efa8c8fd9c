"""The router: text features, the cost rule, notes in the result, and the cost model measured
on the real engine and cached. Nothing here compares wall-clock times: the fit is checked on a
scripted clock, batching on the engine by its forward-pass count."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from parafill.backends.fake import FakeBackend
from parafill.backends.local import LocalBackend, LocalConfig
from parafill.orchestrator.events import Event, PlanGrew
from parafill.orchestrator.runner import run_plan
from parafill.planners import costs
from parafill.planners.costs import PROBE, CostModel, cache_path, cached, measure
from parafill.planners.router import Expected, RouterPlanner, features
from parafill.planners.skeleton import SkeletonPlanner

DIRECT = {
    "Write a Python function that reverses a linked list.": "code",
    "What is 37 * 91 + 4?": "math",
    "Solve for x: 3x + 5 = 20.": "math",
    "Extract the company names from the following text: ...": "extraction",
    "Draft a polite email declining a meeting invitation.": "one flowing text",
    "Read the passage and answer the questions below.": "reading comprehension",
    "If you overtake the second person in a race, what position are you in?": "reasoning",
    "Who wrote Hamlet?": "short factual question",
}
DECOMPOSE = [
    "What are the most effective ways to manage stress?",
    "Explain the benefits and drawbacks of remote work for small companies.",
    "Describe the main causes of the French Revolution.",
    "Give me tips for learning a new language as an adult.",
]


@pytest.mark.parametrize(("question", "kind"), DIRECT.items())
def test_chain_like_requests_go_direct(question: str, kind: str) -> None:
    verdict = features(question)
    assert verdict is not None and not verdict.decompose
    assert verdict.reason.startswith(kind)


@pytest.mark.parametrize("question", DECOMPOSE)
def test_list_like_requests_are_left_to_the_cost_model(question: str) -> None:
    assert features(question) is None


def test_cost_rule_decomposes_only_where_parallel_branches_are_cheap() -> None:
    q = DECOMPOSE[0]
    cheap = CostModel(base=0.03, per_branch=0.002)  # a GPU / batching server
    dear = CostModel(base=0.001, per_branch=0.05)  # each branch costs a full step
    short = Expected(direct_tokens=150)  # a backend / model that answers briefly
    yes = RouterPlanner(cost=cheap, expected=short).decide(q)
    no = RouterPlanner(cost=dear, expected=short).decide(q)
    assert yes.decompose and "decomposed vs" in yes.reason
    assert not no.decompose
    assert RouterPlanner("always", cost=dear).decide("What is 2+2?").decompose
    assert not RouterPlanner("never", cost=cheap).decide(q).decompose


def _outline(prompt: str) -> str:
    """Fake backend script: a parseable skeleton continuation (its last message is "1.")."""
    return " Exercise\n2. Sleep well\n3. Talk to friends" if prompt == "1." else "ok"


@pytest.mark.anyio
async def test_the_decision_is_recorded_in_the_result() -> None:
    router = RouterPlanner(cost=CostModel(0.03, 0.002), skeleton=SkeletonPlanner(point_tokens=8))
    direct = await run_plan(router.plan("Who wrote Hamlet?"), FakeBackend())
    assert direct.notes[0] == "router: direct — short factual question (3 words)"
    assert list(direct.results) == ["answer"]
    sot = router.plan(DECOMPOSE[0])
    # 50 + 8 tokens at 0.032 / 0.040 s per step vs 350 at 0.032: the estimate in the note
    assert sot.notes == (
        "router: skeleton-of-thought — list-like request; estimated 1.9 s decomposed vs "
        "11.2 s direct (measured costs)",
    )
    assert sot.nodes[0].id == "skeleton" and sot.nodes[0].expand == "skeleton"
    assert json.loads(sot.to_json())["notes"] == list(sot.notes)  # survives the JSON boundary
    # run it (the fake backend writes a parseable outline): the router's note stays first,
    # then the n-gram filler's (this backend does not speculate) and the skeleton's, and the
    # run grew the three points from the skeleton's output
    events: list[Event] = []

    async def emit(ev: Event) -> None:
        events.append(ev)

    run = await run_plan(sot, FakeBackend(reply=_outline), expanders=router.expanders, emit=emit)
    assert run.notes[:3] == (
        sot.notes[0],
        "filler 'ngram' ignored: this backend decodes one token per step",
        "skeleton: 3 points",
    )
    (grew,) = [e for e in events if isinstance(e, PlanGrew)]
    assert (grew.node, grew.added) == ("skeleton", ("point-1", "point-2", "point-3"))
    assert run.plan.answer == grew.added and run.answer.startswith("1. Exercise: ok")


class _ProbeLog(FakeBackend):
    """Logs when each probe request starts and ends (an order, not times)."""

    def __init__(self) -> None:
        super().__init__(reply=lambda p: "one two three four five six", delay=0.0)
        self.log: list[tuple[str, str]] = []

    async def stream(self, request):  # type: ignore[no-untyped-def]
        prompt = request.messages[-1].content
        self.log.append(("start", prompt))
        async for chunk in super().stream(request):
            yield chunk
        self.log.append(("end", prompt))


@pytest.mark.anyio
async def test_measure_runs_each_width_concurrently_and_fits_the_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a scripted clock: 6 steps take 0.060 s alone and 0.078 s three at a time
    ticks = iter([10.0, 10.060, 20.0, 20.078])
    monkeypatch.setattr(costs, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    fake = _ProbeLog()
    model = await measure(fake, widths=(1, 3), tokens=6)
    assert model.step(1) == pytest.approx(0.010) and model.step(3) == pytest.approx(0.013)
    assert model.per_branch == pytest.approx(0.0015) and model.source == "measured"
    # width 1: one probe, done before the width-3 probes; width 3: all three in flight at once
    first, rest = fake.log[:2], fake.log[2:]
    assert first == [("start", f"{PROBE} (0)"), ("end", f"{PROBE} (0)")]
    assert [kind for kind, _ in rest] == ["start"] * 3 + ["end"] * 3
    assert {p for _, p in rest} == {f"{PROBE} ({k})" for k in range(3)}
    # wider steps that measured faster (noise) give no negative per-branch cost
    ticks = iter([0.0, 0.12, 1.0, 1.06])  # the scripted clock reads these next
    assert (await measure(_ProbeLog(), widths=(1, 3), tokens=6)).per_branch == 0.0


@pytest.mark.anyio
async def test_cost_model_is_measured_on_the_engine_and_cached(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # no speculation: one decode step per token, so forward passes count decode steps
    async with LocalBackend.open(LocalConfig(filler="autoregressive")) as local:
        passes = {}
        for width in (1, 3):
            before = local.forward_passes
            await measure(local, widths=(width,), tokens=6)
            passes[width] = local.forward_passes - before
        # 3 concurrent probes share their decode steps on this engine (batching pays): far
        # fewer forward passes than 3 probes one after another
        assert passes[1] >= 6 and passes[3] < 2 * passes[1], passes
        monkeypatch.setenv("PARAFILL_CACHE", str(tmp_path))
        before = local.forward_passes
        first = await cached(local, "smol test/key")
        assert local.forward_passes > before  # nothing cached yet: measured on the engine
    path = cache_path("smol test/key")
    assert path.parent == tmp_path / "costs" and path.exists()
    saved = CostModel(**json.loads(path.read_text()))
    assert saved == first and first.source == "measured"
    fake = FakeBackend()
    assert await cached(fake, "smol test/key") == first
    assert fake.calls == []  # read back, not re-measured
