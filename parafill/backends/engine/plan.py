"""The two values one engine step hands between its parts: `StepPlan` (what the scheduler chose
to run) and `StepResult` (what the model runner produced). Frozen, no logic, no torch import;
the sequences they name stay mutable `Seq`s, written only by the scheduler (scheduler.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from parafill.backends.engine.config import StepOutput
from parafill.backends.engine.schedule import Seq
from parafill.backends.engine.spec import Shape

if TYPE_CHECKING:
    from parafill.backends.engine.verify import Window


@dataclass(frozen=True)
class StepPlan:
    # the live sequences with tokens to feed: a step that fails ends them all, and the drafter
    # clears their drafts after it (some may not fit this step's prefill budget)
    work: tuple[Seq, ...] = ()
    feeds: tuple[tuple[Seq, int], ...] = ()  # who feeds how many tokens (schedule.schedule)
    decode_only: bool = False  # every sequence feeds its last token (plus drafts): no prefill
    plain: bool = False  # no penalties, bias or drafts: decode-only, the static decoder may run it
    width: int | None = None  # the batch width the drafter files the step under (None: prefill)
    outputs: tuple[StepOutput, ...] = ()  # decided at scheduling: cancelled requests
    started: float = 0.0  # perf_counter before drafting: the drafter weighs the whole step


@dataclass(frozen=True)
class StepResult:
    windows: tuple[Window, ...]  # per sequence that chose tokens, in logits order
    written: tuple[tuple[int, ...], ...]  # per feed, the columns now holding its kept K/V
    marked: bool = False  # the static decoder marked `written` visible itself (on the device)
    cost: tuple[Shape, float] | None = None  # an eager decode step: shape, forward seconds


__all__ = ["StepPlan", "StepResult"]
