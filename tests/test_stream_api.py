"""`parafill.stream` on the fake backend (orchestration only): leaving the `async with` early
cancels the run without an error; a failed run, or the caller's own error, comes out of the
block as itself, not inside an ExceptionGroup."""

from __future__ import annotations

import anyio
import pytest

import parafill
from parafill.backends.fake import FakeBackend
from parafill.orchestrator.events import NodeFailed, NodeText, RunFinished
from parafill.orchestrator.plan import Node, Plan
from parafill.orchestrator.runner import RunFailed

pytestmark = pytest.mark.anyio
WORDS = " ".join(f"w{i}" for i in range(40))


async def test_break_after_the_first_event_cancels_the_run_cleanly() -> None:
    fake = FakeBackend(reply=lambda p: WORDS, delay=0.001)
    plan = Plan(tuple(Node(f"n{i}", f"p{i}") for i in range(4)))
    with anyio.fail_after(30):  # a guard against a hang, not a measurement
        async with parafill.stream(plan, backend=fake) as events:
            async for _ in events:
                break
    assert fake.calls and all(c.ended is not None for c in fake.calls)


async def test_leaving_early_stops_a_node_that_would_never_finish() -> None:
    fake = FakeBackend(hang_on=("forever",))
    plan = Plan((Node("quick", "hello"), Node("stuck", "forever")))
    with anyio.fail_after(30):
        async with parafill.stream(plan, backend=fake) as events:
            async for ev in events:
                if isinstance(ev, NodeText) and ev.node == "quick":
                    break
    stuck = [c for c in fake.calls if c.prompt == "forever"]
    assert stuck and stuck[0].ended is not None  # its request was cancelled, not left running


async def test_a_failed_run_raises_its_own_error_after_the_events() -> None:
    fake = FakeBackend(fail_times={"boom": 1})
    plan = Plan((Node("fine", "hello"), Node("bad", "boom", ("fine",))))
    seen = []
    with pytest.raises(RunFailed, match="node 'bad' failed: injected failure") as err:
        async with parafill.stream(plan, backend=fake) as events:
            seen = [ev async for ev in events]
    assert any(isinstance(ev, NodeFailed) and ev.node == "bad" for ev in seen)
    assert not any(isinstance(ev, RunFinished) for ev in seen)
    assert "fine" in err.value.result.results


async def test_the_callers_own_error_comes_out_as_itself() -> None:
    fake = FakeBackend(reply=lambda p: WORDS, delay=0.001)
    with pytest.raises(KeyError, match="mine"):
        async with parafill.stream(Plan((Node("a", "x"),)), backend=fake) as events:
            async for _ in events:
                raise KeyError("mine")
    assert all(c.ended is not None for c in fake.calls)


async def test_reading_to_the_end_still_gives_every_event() -> None:
    fake = FakeBackend(reply=lambda p: "one two", delay=0.001)
    async with parafill.stream(Plan((Node("a", "x"),)), backend=fake) as events:
        seen = [ev async for ev in events]
    assert isinstance(seen[-1], RunFinished) and seen[-1].result.results["a"].text == "one two"
