"""Orchestration logic on the fake backend: order, overlap, growth, timeouts, retries.

Order and overlap are read from the events the runner emits (and, for the backend's side,
from counters), never from wall-clock timestamps: the asserts hold under any load."""

import anyio
import pytest

from parafill.backends.fake import FakeBackend
from parafill.orchestrator.events import (
    Event,
    NodeFailed,
    NodeFinished,
    NodeStarted,
    NodeText,
    PlanGrew,
)
from parafill.orchestrator.plan import Growth, Node, Plan, PlanError
from parafill.orchestrator.runner import RunConfig, RunFailed, run_plan

pytestmark = pytest.mark.anyio


class _Recorder:
    """An `emit` callback that keeps every event, in the order the runner emitted them."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def __call__(self, ev: Event) -> None:
        self.events.append(ev)

    def at(self, kind: type, node: str) -> int:
        """Index of the first `kind` event for `node` (fails if there is none)."""
        for i, ev in enumerate(self.events):
            if isinstance(ev, kind) and _node_of(ev) == node:
                return i
        raise AssertionError(f"no {kind.__name__} for {node!r} in {self.trace()}")

    def trace(self) -> list[tuple[str, str]]:
        """(event kind, node) for the start / text / finish events, in emission order."""
        kinds = (NodeStarted, NodeText, NodeFinished)
        return [(type(e).__name__, _node_of(e)) for e in self.events if isinstance(e, kinds)]


def _node_of(ev: Event) -> str:
    return ev.result.id if isinstance(ev, NodeFinished) else ev.node  # type: ignore[union-attr]


def _diamond() -> Plan:
    return Plan(
        (
            Node("a", "A"),
            Node("b", "B after {{a}}", ("a",)),
            Node("c", "C after {{a}}", ("a",)),
            Node("d", "D", ("b", "c")),
        ),
        answer=("b", "c", "d"),
    )


async def test_dependencies_before_dependents_and_siblings_overlap():
    fake = FakeBackend(reply=lambda p: "w " * 5)
    rec = _Recorder()
    result = await run_plan(_diamond(), fake, emit=rec)
    start = {n: rec.at(NodeStarted, n) for n in "abcd"}
    end = {n: rec.at(NodeFinished, n) for n in "abcd"}
    # a node starts only after every dependency finished
    assert end["a"] < start["b"] and end["a"] < start["c"]
    assert max(end["b"], end["c"]) < start["d"]
    # the siblings b and c both started before either finished: they ran at the same time
    assert max(start["b"], start["c"]) < min(end["b"], end["c"])
    # and their text streamed interleaved, not one node after the other
    texts = [n for kind, n in rec.trace() if kind == "NodeText" and n in "bc"]
    assert texts.index("c") < len(texts) - 1 - texts[::-1].index("b"), texts
    assert texts.index("b") < len(texts) - 1 - texts[::-1].index("c"), texts
    assert set(result.results) == {"a", "b", "c", "d"}
    assert len(fake.calls) == 4


async def test_dependent_prompt_receives_outputs():
    fake = FakeBackend(reply=lambda p: "SECRET" if p == "A" else p)
    result = await run_plan(_diamond(), fake)
    assert result.results["b"].text == "B after SECRET"
    assert "[b]\nB after SECRET" in result.results["d"].text


class _Counting(FakeBackend):
    """Counts requests in flight at the backend (a counter, not a clock)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0

    async def stream(self, request):  # type: ignore[no-untyped-def]
        self.live += 1
        self.peak = max(self.peak, self.live)
        try:
            async for chunk in super().stream(request):
                yield chunk
        finally:
            self.live -= 1


async def test_concurrency_cap():
    fake = _Counting()
    rec = _Recorder()
    plan = Plan(tuple(Node(f"n{i}", f"p{i}") for i in range(6)))
    await run_plan(plan, fake, RunConfig(max_concurrency=2), emit=rec)
    live = peak = 0
    for kind, _ in rec.trace():
        live += {"NodeStarted": 1, "NodeFinished": -1}.get(kind, 0)
        peak = max(peak, live)
    assert peak == 2 and live == 0  # two at a time, never more (and never only one)
    assert fake.peak == 2 and len(fake.calls) == 6
    # ready nodes start in plan order
    assert [n for kind, n in rec.trace() if kind == "NodeStarted"] == [f"n{i}" for i in range(6)]


async def test_dynamic_growth_runs_new_nodes_and_assembles_answer():
    fake = FakeBackend(reply=lambda p: "x y" if p == "outline" else p.upper())

    def grow(node: Node, text: str) -> Growth:
        kids = tuple(Node(f"k{i}", f"expand {w}", (node.id,)) for i, w in enumerate(text.split()))
        return Growth(kids, tuple(k.id for k in kids), note="grew")

    events = []

    async def emit(ev):
        events.append(ev)

    plan = Plan((Node("root", "outline", expand="g"),), answer=("root",))
    result = await run_plan(plan, fake, expanders={"g": grow}, emit=emit)
    assert result.answer.startswith("CONTEXT FROM EARLIER STEPS")
    assert [n.id for n in result.plan.nodes] == ["root", "k0", "k1"]
    assert result.plan.answer == ("k0", "k1")
    assert result.notes == ("grew",)
    assert any(isinstance(e, PlanGrew) and e.added == ("k0", "k1") for e in events)
    assert any(isinstance(e, NodeText) for e in events)


async def test_timeout_then_failure_keeps_finished_results():
    fake = FakeBackend(hang_on=("slow",))
    plan = Plan((Node("ok", "fast"), Node("bad", "slow one"), Node("later", "x", ("bad",))))
    with pytest.raises(RunFailed, match="node 'bad' failed: timed out after 0.2 s") as err:
        await run_plan(plan, fake, RunConfig(node_timeout=0.2, retries=1, retry_delay=0.01))
    assert set(err.value.result.results) == {"ok"}
    assert err.value.result.failed == {"bad": "timed out after 0.2 s"}
    assert err.value.result.cancelled == ("later",)
    assert sum("slow" in c.prompt for c in fake.calls) == 2  # retried once


async def test_retry_recovers_from_transient_failure():
    fake = FakeBackend(fail_times={"flaky": 2})
    events = []

    async def emit(ev):
        events.append(ev)

    result = await run_plan(
        Plan((Node("f", "flaky"),)), fake, RunConfig(retries=2, retry_delay=0.01), emit=emit
    )
    assert result.results["f"].attempts == 3
    assert [e.will_retry for e in events if isinstance(e, NodeFailed)] == [True, True]


async def test_missing_expander_is_refused_before_any_node_runs():
    fake = FakeBackend()
    plan = Plan((Node("a", "x"), Node("r", "y", ("a",), expand="nope")))
    with pytest.raises(PlanError, match="node 'r' names expand hook 'nope'") as err:
        await run_plan(plan, fake, expanders={"g": lambda node, text: Growth()})
    assert err.value.node == "r"
    assert fake.calls == []  # refused at start: no node ran


async def test_grown_node_with_a_missing_expander_fails_the_growing_node():
    def grow(node: Node, text: str) -> Growth:
        return Growth((Node("kid", "k", (node.id,), expand="nope"),))

    fake = FakeBackend()
    with pytest.raises(RunFailed, match="node 'kid' names expand hook 'nope'") as err:
        await run_plan(Plan((Node("r", "x", expand="g"),)), fake, expanders={"g": grow})
    assert err.value.node == "r" and "r" in err.value.result.results
    assert len(fake.calls) == 1  # the grown node never ran


async def test_cancelling_a_run_cancels_its_nodes():
    fake = FakeBackend(hang_on=("hang",))
    plan = Plan((Node("a", "hang a"), Node("b", "hang b")))
    with anyio.move_on_after(0.2) as scope:
        await run_plan(plan, fake)
    assert scope.cancel_called
    assert len(fake.calls) == 2 and all(c.ended is not None for c in fake.calls)


@pytest.mark.anyio
async def test_node_seed_reaches_the_backend_and_overrides_the_run_seed() -> None:
    seen: dict[str, int | None] = {}

    class Recorder(FakeBackend):
        def stream(self, request):  # type: ignore[no-untyped-def]
            seen[request.messages[-1].content] = request.sampling.seed
            return super().stream(request)

    plan = Plan((Node("a", "A", seed=7, temperature=0.5), Node("b", "B")), answer=("a", "b"))
    await run_plan(plan, Recorder(), RunConfig(seed=3))
    assert seen == {"A": 7, "B": 3}


class _Gated(FakeBackend):
    """Holds the answers to the prompts in `gates` until the test opens their gate: the same
    replies, a finish order the test chooses (no sleeps)."""

    def __init__(self, gated: tuple[str, ...]) -> None:
        super().__init__(reply=lambda p: f"re {p}", delay=0.0)
        self.gates = {p: anyio.Event() for p in gated}
        self.finished: list[str] = []

    async def stream(self, request):  # type: ignore[no-untyped-def]
        prompt = request.messages[-1].content
        if prompt in self.gates:
            await self.gates[prompt].wait()
        async for chunk in super().stream(request):
            yield chunk
        self.finished.append(prompt)


def _kids(node: Node, text: str) -> Growth:
    kids = (Node(f"{node.id}1", f"kid of {{{{{node.id}}}}}", (node.id,)),)
    return Growth(kids, (node.id, kids[0].id), note=f"{node.id} grew")


# each tuple: prompts whose gates open together; the next opens once those results applied
@pytest.mark.parametrize("order", [(("A",), ("B",)), (("B",), ("A",)), (("A", "B"),)])
async def test_results_apply_in_plan_order_whichever_node_finishes_first(order) -> None:
    fake = _Gated(("A", "B"))
    rec = _Recorder()
    applied = {"A": anyio.Event(), "B": anyio.Event()}

    async def emit(ev: Event) -> None:
        await rec(ev)
        if isinstance(ev, NodeFinished) and ev.result.id in ("a", "b"):
            applied[ev.result.id.upper()].set()

    async def release() -> None:
        for group in order:
            for prompt in group:
                fake.gates[prompt].set()
            for prompt in group:
                await applied[prompt].wait()

    plan = Plan((Node("a", "A", expand="kids"), Node("b", "B", expand="kids")), notes=("p",))
    with anyio.fail_after(30):  # a guard against a hang, not a measurement
        async with anyio.create_task_group() as tg:
            tg.start_soon(release)
            result = await run_plan(plan, fake, expanders={"kids": _kids}, emit=emit)
    if len(order) == 2:  # the chosen node really did finish (and was applied) first
        first, second = (g[0].lower() for g in order)
        assert [p for p in fake.finished if p in ("A", "B")] == [g[0] for g in order]
        assert rec.at(NodeFinished, first) < rec.at(NodeFinished, second)
    grew = [ev.node for ev in rec.events if isinstance(ev, PlanGrew)]
    assert sorted(grew) == ["a", "b"]
    assert [n.id for n in result.plan.nodes] == ["a", "b", "a1", "b1"]
    assert result.plan.answer == ("b", "b1")  # b's growth is later in plan order: it wins
    assert result.notes == ("p", "a grew", "b grew")
    assert result.answer == "re B\n\nre kid of re B"
    assert list(result.results) == ["a", "b", "a1", "b1"]


async def test_a_failure_cancels_the_rest_and_the_result_says_which() -> None:
    fake = FakeBackend(fail_times={"bad": 1}, hang_on=("hang",))
    plan = Plan(
        (
            Node("fast", "fast"),
            Node("hang", "hang on"),
            Node("bad", "bad after {{fast}}", ("fast",)),
            Node("after", "after {{bad}}", ("bad",)),
        )
    )
    with pytest.raises(RunFailed, match="node 'bad' failed: injected failure") as err:
        await run_plan(plan, fake)
    result = err.value.result
    assert set(result.results) == {"fast"}
    assert set(result.failed) == {"bad"}
    assert result.cancelled == ("hang", "after")  # running and never started, in plan order
    assert all(c.ended is not None for c in fake.calls)  # the hanging call was cancelled
