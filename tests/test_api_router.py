"""`parafill.arun`'s default planner is the router, as `parafill run`'s is: its decision and the
reason end up in the result's notes. On the engine `arun` opens itself, list-like questions are
decided by that engine's step costs, measured once and cached (here the engine is replaced by
the fake backend: orchestration and caching only, never evidence of speed)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import parafill
from parafill import api
from parafill.backends.fake import FakeBackend
from parafill.backends.local import LocalBackend, LocalConfig
from parafill.planners.costs import PROBE, cache_path
from parafill.planners.router import RouterPlanner

pytestmark = pytest.mark.anyio
LIST_LIKE = "What are good ways to save money?"
OUTLINE = " Spend less\n2. Save more\n3. Invest"


def _fake() -> FakeBackend:
    """Continues the skeleton's "1." with three points; says "ok" to everything else."""
    return FakeBackend(reply=lambda prompt: OUTLINE if prompt == "1." else "ok", delay=0.001)


@dataclass
class Engine:
    fake: FakeBackend
    opened: list[LocalConfig] = field(default_factory=list)  # the configs `arun` opened


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Engine:
    """`arun` without a backend opens this fake instead of the local engine; costs are cached
    under tmp_path."""
    engine = Engine(_fake())

    @asynccontextmanager
    async def open_fake(cfg: LocalConfig, on_convert: object = None) -> AsyncIterator[FakeBackend]:
        engine.opened.append(cfg)
        yield engine.fake

    monkeypatch.setattr(LocalBackend, "open", staticmethod(open_fake))
    monkeypatch.setenv("PARAFILL_CACHE", str(tmp_path))
    return engine


async def test_default_planner_routes_a_list_like_question_and_says_why() -> None:
    result = await parafill.arun(LIST_LIKE, backend=_fake())
    route = (  # the fake says it batches requests: the router assumes a batching server
        "router: skeleton-of-thought — list-like request; estimated 2.0 s decomposed vs 7.4 s "
        "direct (assumed: batching server costs)"
    )
    # then the fillers the fake ignored and the skeleton's note
    assert result.notes[0] == route and "skeleton: 3 points" in result.notes
    assert result.plan.answer == ("point-1", "point-2", "point-3")
    assert result.answer.startswith("1. Spend less: ok")


async def test_default_planner_answers_a_short_request_directly() -> None:
    result = await parafill.arun("How to relax?", backend=_fake())
    assert result.notes[0] == "router: direct — short request without list cues (3 words)"
    assert result.plan.answer == ("answer",) and result.answer == "ok"


async def test_arun_on_its_own_engine_measures_costs_once_then_reads_the_cache(
    engine: Engine,
) -> None:
    first = await parafill.arun(LIST_LIKE, model="my-model")
    assert first.notes[0].startswith("router: skeleton-of-thought — list-like request; estimated")
    assert first.notes[0].endswith("(measured costs)") and "skeleton: 3 points" in first.notes
    assert engine.opened == [LocalConfig(model="my-model")]
    assert cache_path(api.cost_key(engine.opened[0])).exists()
    probes = sum(PROBE in c.prompt for c in engine.fake.calls)
    assert probes == 1 + 4  # widths 1 and 4
    second = await parafill.arun(LIST_LIKE, model="my-model")
    assert second.notes == first.notes  # the same cost model, read back from the cache
    assert sum(PROBE in c.prompt for c in engine.fake.calls) == probes  # not measured again


async def test_with_costs_measures_only_what_the_router_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PARAFILL_CACHE", str(tmp_path))
    fake, told = _fake(), []
    local = LocalConfig(model="m")
    skeleton = parafill.SkeletonPlanner()
    assert await api.with_costs(skeleton, LIST_LIKE, fake, local, told.append) is skeleton
    router = RouterPlanner()
    assert await api.with_costs(router, "What is 2+2?", fake, local, told.append) is router
    always = RouterPlanner("always")
    assert await api.with_costs(always, LIST_LIKE, fake, local, told.append) is always
    assert not fake.calls and not told  # nothing was measured
    costed = await api.with_costs(router, LIST_LIKE, fake, local, told.append)
    assert isinstance(costed, RouterPlanner) and costed.cost is not None
    assert told == ["router: measuring this backend's step time once (cached)..."]
    measured = len(fake.calls)
    again = await api.with_costs(router, LIST_LIKE, fake, local, told.append)
    assert again == costed and len(fake.calls) == measured and len(told) == 1  # from the cache


async def test_arun_opens_the_engine_with_every_setting_given(engine: Engine) -> None:
    cfg = LocalConfig(model="m", mode="tree", prefill_chunk=64, decode="static", max_seqs=8)
    await parafill.arun("How to relax?", local=cfg)
    assert engine.opened == [cfg]  # prefill_chunk, decode, max_seqs reach the engine config
    assert cfg.engine().prefill_chunk == 64 and cfg.engine().decode == "static"
    with pytest.raises(ValueError, match="not both"):
        await parafill.arun("How to relax?", local=cfg, model="other")


async def test_a_backend_that_does_not_batch_gets_no_assumed_costs() -> None:
    from parafill.backends.base import Capabilities

    class Serial(FakeBackend):
        @property
        def capabilities(self) -> Capabilities:
            return Capabilities(batched=False, max_concurrency=1)

    fake = Serial(reply=_fake().reply, delay=0.001)
    result = await parafill.arun(LIST_LIKE, backend=fake)
    route = "router: skeleton-of-thought — list-like request (no cost model: decomposing)"
    assert result.notes[0] == route
    started = [c.started for c in fake.calls]
    ended = [c.ended for c in fake.calls]
    # max_concurrency 1: the runner sends one request at a time (each ends before the next)
    assert all(e is not None and e <= s for e, s in zip(ended, started[1:], strict=False))
