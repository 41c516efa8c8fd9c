"""Orchestration logic on the fake backend: order, overlap, growth, timeouts, retries."""

import anyio
import pytest

from parafill.backends.fake import FakeBackend
from parafill.orchestrator.events import NodeFailed, NodeText, PlanGrew
from parafill.orchestrator.plan import Growth, Node, Plan, PlanError
from parafill.orchestrator.runner import RunConfig, RunFailed, run_plan

pytestmark = pytest.mark.anyio


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
    fake = FakeBackend(reply=lambda p: "w " * 5, delay=0.02)
    result = await run_plan(_diamond(), fake)
    calls = {
        c.prompt.split()[0] if not c.prompt.startswith("Context") else "D": c for c in fake.calls
    }
    by_first = {c.prompt.split(" ")[0]: c for c in fake.calls}
    a, b, c = by_first["A"], by_first["B"], by_first["C"]
    d = calls["D"]
    assert a.ended <= b.started and a.ended <= c.started
    assert max(b.ended, c.ended) <= d.started
    assert b.started < c.ended and c.started < b.ended  # b and c overlapped
    assert set(result.results) == {"a", "b", "c", "d"}


async def test_dependent_prompt_receives_outputs():
    fake = FakeBackend(reply=lambda p: "SECRET" if p == "A" else p)
    result = await run_plan(_diamond(), fake)
    assert result.results["b"].text == "B after SECRET"
    assert "[b]\nB after SECRET" in result.results["d"].text


async def test_concurrency_cap():
    fake = FakeBackend(delay=0.02)
    plan = Plan(tuple(Node(f"n{i}", f"p{i}") for i in range(6)))
    await run_plan(plan, fake, RunConfig(max_concurrency=2))
    events = sorted([(c.started, 1) for c in fake.calls] + [(c.ended, -1) for c in fake.calls])
    live = peak = 0
    for _, delta in events:
        live += delta
        peak = max(peak, live)
    assert peak == 2


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


class _Paced(FakeBackend):
    """Waits `wait[prompt]` seconds before answering: the same replies, a chosen finish order."""

    def __init__(self, wait: dict[str, float]) -> None:
        super().__init__(reply=lambda p: f"re {p}", delay=0.0)
        self.wait = wait
        self.finished: list[str] = []

    async def stream(self, request):  # type: ignore[no-untyped-def]
        prompt = request.messages[-1].content
        await anyio.sleep(self.wait.get(prompt, 0.0))
        async for chunk in super().stream(request):
            yield chunk
        self.finished.append(prompt)


def _kids(node: Node, text: str) -> Growth:
    kids = (Node(f"{node.id}1", f"kid of {{{{{node.id}}}}}", (node.id,)),)
    return Growth(kids, (node.id, kids[0].id), note=f"{node.id} grew")


@pytest.mark.parametrize("wait", [{"A": 0.15}, {"B": 0.15}, {}])
async def test_results_apply_in_plan_order_whichever_node_finishes_first(wait) -> None:
    fake = _Paced(wait)
    plan = Plan((Node("a", "A", expand="kids"), Node("b", "B", expand="kids")), notes=("p",))
    result = await run_plan(plan, fake, expanders={"kids": _kids})
    if wait:  # the slow one really did finish last
        assert [p for p in fake.finished if p in ("A", "B")][-1] == next(iter(wait))
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
