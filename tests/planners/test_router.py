"""The router: text features, the cost rule, notes in the result, and the cost model measured
on the real engine and cached."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from parafill.backends.fake import FakeBackend
from parafill.backends.local import LocalBackend
from parafill.orchestrator.runner import run_plan
from parafill.planners.costs import CostModel, cache_path, cached, measure
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


@pytest.mark.anyio
async def test_the_decision_is_recorded_in_the_result() -> None:
    router = RouterPlanner(cost=CostModel(0.03, 0.002), skeleton=SkeletonPlanner(point_tokens=8))
    direct = await run_plan(router.plan("Who wrote Hamlet?"), FakeBackend())
    assert direct.notes[0].startswith("router: direct — short factual question")
    assert list(direct.results) == ["answer"]
    sot = router.plan(DECOMPOSE[0])
    assert sot.nodes[0].id == "skeleton" and "router: skeleton-of-thought" in sot.notes[0]
    assert json.loads(sot.to_json())["notes"] == list(sot.notes)  # survives the JSON boundary


@pytest.mark.anyio
async def test_cost_model_is_measured_on_the_engine_and_cached(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async with LocalBackend.open() as local:
        model = await measure(local, widths=(1, 3), tokens=6)
        assert model.base > 0 and model.per_branch >= 0
        # 3 branches per step cost less than 3 separate steps: batching pays on this engine
        assert model.step(3) < 3 * model.step(1)
        monkeypatch.setenv("PARAFILL_CACHE", str(tmp_path))
        first = await cached(local, "smol test/key")
    path = cache_path("smol test/key")
    assert path.parent == tmp_path / "costs" and path.exists()
    saved = CostModel(**json.loads(path.read_text()))
    assert saved == first
    assert await cached(FakeBackend(), "smol test/key") == first  # read back, not re-measured
