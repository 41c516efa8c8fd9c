"""The runner and fillers on fake backends (orchestration only): each request carries its node's
filler (or the run's override); a backend that does not speculate still finishes the run, and
the result says once per filler that it was ignored."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from parafill.backends.base import Capabilities, Chunk, Request
from parafill.backends.fake import FakeBackend
from parafill.orchestrator.plan import Growth, Node, Plan
from parafill.orchestrator.runner import RunConfig, RunFailed, run_plan

pytestmark = pytest.mark.anyio


def note(name: str) -> str:
    return f"filler {name!r} ignored: this backend decodes one token per step"


def _plan(*fillers: str | None) -> Plan:
    """A head node (with the first filler) plus one node per filler, each depending on it."""
    nodes = [Node("head", "H", filler=fillers[0] if fillers else None)]
    nodes += [Node(f"n{i}", f"P{i}", ("head",), filler=f) for i, f in enumerate(fillers)]
    return Plan(tuple(nodes))


@dataclass
class Recording:
    """Answers every request with "ok" and records its filler by prompt; speculates or not."""

    speculates: bool = False
    fillers: dict[str, str | None] = field(default_factory=dict)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(batched=True, speculates=self.speculates)

    async def stream(self, request: Request) -> AsyncIterator[Chunk]:
        self.fillers[request.messages[-1].content.split("\n")[-1]] = request.filler
        yield Chunk("ok", tokens=1, finish_reason="stop")


async def test_fake_backend_does_not_speculate() -> None:
    assert FakeBackend().capabilities.speculates is False


async def test_several_ngram_nodes_finish_with_exactly_one_note() -> None:
    plan = _plan("ngram", "ngram", "ngram")
    result = await run_plan(plan, FakeBackend(delay=0))
    assert set(result.results) == {"head", "n0", "n1", "n2"}
    assert result.failed == {}
    assert list(result.notes) == [note("ngram")]


async def test_one_note_per_ignored_filler_and_planner_notes_kept() -> None:
    plan = _plan("ngram", "jacobi", "ngram", "jacobi", None, "autoregressive")
    plan = Plan(plan.nodes, notes=("router: decomposed",))
    result = await run_plan(plan, FakeBackend(delay=0))
    assert result.notes[0] == "router: decomposed"
    assert sorted(result.notes[1:]) == [note("jacobi"), note("ngram")]


@pytest.mark.parametrize("name", [None, "autoregressive"])
async def test_no_note_without_a_drafting_filler(name: str | None) -> None:
    result = await run_plan(_plan(name, name), FakeBackend(delay=0))
    assert result.notes == ()
    result = await run_plan(_plan(None), FakeBackend(delay=0), RunConfig(filler=name))
    assert result.notes == ()


async def test_the_run_filler_overrides_the_nodes_and_is_noted_once() -> None:
    fake = Recording()
    result = await run_plan(_plan(None, "jacobi", None), fake, RunConfig(filler="ngram"))
    assert set(fake.fillers.values()) == {"ngram"}
    assert list(result.notes) == [note("ngram")]
    # "autoregressive" overrides too: nothing drafts, nothing to note
    fake = Recording()
    result = await run_plan(_plan("ngram", "jacobi"), fake, RunConfig(filler="autoregressive"))
    assert set(fake.fillers.values()) == {"autoregressive"}
    assert result.notes == ()


async def test_requests_carry_each_nodes_own_filler() -> None:
    fake = Recording(speculates=True)
    result = await run_plan(_plan("ngram", "jacobi", None, "autoregressive"), fake)
    assert fake.fillers == {
        "H": "ngram",
        "P0": "ngram",
        "P1": "jacobi",
        "P2": None,
        "P3": "autoregressive",
    }
    assert result.notes == ()  # a backend that speculates honours them


async def test_grown_nodes_do_not_repeat_the_note() -> None:
    def grow(node: Node, text: str) -> Growth:
        kids = tuple(Node(f"k{i}", f"K{i}", filler="ngram") for i in range(3))
        return Growth(kids, answer=tuple(k.id for k in kids), note="grew 3")

    plan = Plan((Node("outline", "O", filler="ngram", expand="grow"),))
    result = await run_plan(plan, FakeBackend(delay=0), expanders={"grow": grow})
    assert set(result.results) == {"outline", "k0", "k1", "k2"}
    assert sorted(result.notes) == sorted([note("ngram"), "grew 3"])


async def test_a_grown_node_with_an_unknown_filler_fails_the_run_naming_it() -> None:
    def grow(node: Node, text: str) -> Growth:
        return Growth((Node("k0", "K0", filler="magic"),))

    plan = Plan((Node("outline", "O", expand="grow"),))
    with pytest.raises(RunFailed) as info:
        await run_plan(plan, FakeBackend(delay=0), expanders={"grow": grow})
    assert "node 'k0' names unknown filler 'magic'" in info.value.error
    assert set(info.value.result.results) == {"outline"}
