"""Fillers whose drafts come from a model: `self` (the target with some layers skipped) and
`draft` (a second, smaller model sharing the target's tokenizer).

A model drafter needs the engine's caches and forward, and pays only when every drafting
sequence shares its forwards, so the engine computes these drafts itself, batched, before it
asks proposers (`parafill.backends.engine.modeldraft`). The proposer is the sequence's handle:
it hands the engine's draft to the verify step like any other proposal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

from parafill.fillers.base import Draft, Outcome, Sources

Kind = Literal["self", "draft"]


class ModelDrafts:
    """The proposer of a sequence drafted by a model: `pending` is what the engine's batched
    draft pass left for it this step (its tokens and the drafter's probability of each);
    `q` the drafter's distributions where it sampled (temperature > 0)."""

    def __init__(self, kind: Kind) -> None:
        self.kind: Kind = kind
        self.pending: Draft | None = None
        self.q: Any = None
        # the drafter's own probability of each pending draft, and where verdicts go (the
        # drafter calibrates its chance of being kept from them)
        self.raw: tuple[float, ...] = ()
        self.learn: Callable[[Sequence[float], int], None] | None = None

    def propose(self, tokens: Sequence[int], k: int) -> Draft | list[int]:
        got, self.pending = self.pending, None
        return got if got is not None else []

    def observe(self, outcome: Outcome) -> None:
        if self.learn is not None and self.raw and outcome.draft:
            self.learn(self.raw[: len(outcome.draft)], outcome.accepted)
        self.q, self.raw = None, ()


def self_drafts(sources: Sources) -> ModelDrafts:
    return ModelDrafts("self")


def model_drafts(sources: Sources) -> ModelDrafts:
    return ModelDrafts("draft")
