"""`Node.stop_repeated_line`: a node's text is cut at the first line that repeats an earlier
one (numbering aside) and its request is stopped there; what streams out is whole lines."""

from __future__ import annotations

import pytest

from parafill.backends.fake import FakeBackend
from parafill.orchestrator.events import Event, NodeText
from parafill.orchestrator.plan import Node, Plan
from parafill.orchestrator.repeats import LineGuard, item_key
from parafill.orchestrator.runner import run_plan


def test_item_key_ignores_numbering_bullets_case_and_space() -> None:
    assert item_key("3. Exercise Daily \n") == item_key(" exercise daily") == "exercise daily"
    assert item_key("- Exercise daily") == item_key("12) exercise daily") == "exercise daily"
    assert item_key("Exercise daily, twice") != item_key("Exercise daily")


def test_guard_cuts_at_the_first_repeated_line_across_chunk_boundaries() -> None:
    g = LineGuard()
    assert g.feed(" Exercise da") == ("", False)
    assert g.feed("ily\n2. Sleep") == (" Exercise daily\n", False)
    assert g.feed(" well\n3. exercise") == ("2. Sleep well\n", False)
    assert g.feed(" daily\n4. Eat") == ("", True)  # line 3 repeats line 1
    assert g.rest() == "" and g.text == " Exercise daily\n2. Sleep well\n"


def test_guard_keeps_a_text_without_repeats_whole() -> None:
    g = LineGuard()
    text = " A\n2. B\n\n3. C"  # blank lines are not items
    shown = "".join(g.feed(c)[0] for c in text) + g.rest()
    assert shown == g.text == text and not g.stopped


@pytest.mark.anyio
async def test_a_looping_outline_stops_at_its_first_repeat() -> None:
    outline = " Exercise daily\n2. Sleep well\n3. Exercise daily\n4. Exercise daily\n5. Eat more"
    fake = FakeBackend(reply=lambda prompt: outline, delay=0.0)
    plan = Plan((Node("s", "Outline?", max_tokens=100, stop_repeated_line=True),), ("s",))
    seen: list[Event] = []

    async def emit(ev: Event) -> None:
        seen.append(ev)

    run = await run_plan(plan, fake, emit=emit)
    res = run.results["s"]
    assert res.text == " Exercise daily\n2. Sleep well\n" and res.finish_reason == "stop"
    # the fake yields a chunk per space-split word (the first is ""): the 7th (" daily\n4.")
    # completed the repeated line, and the stream was closed there, not run to its 11
    assert res.tokens == 7 and fake.calls[0].ended is not None
    assert "".join(e.text for e in seen if isinstance(e, NodeText)) == res.text
    unguarded = Plan((Node("s", "Outline?", max_tokens=100),), ("s",))
    assert (await run_plan(unguarded, fake)).results["s"].text == outline


def test_the_flag_survives_a_plan_file() -> None:
    plan = Plan((Node("s", "Outline?", stop_repeated_line=True),), ("s",))
    assert Plan.from_json(plan.to_json()).nodes[0].stop_repeated_line
