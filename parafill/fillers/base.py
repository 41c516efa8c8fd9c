"""The filler protocol: how a node decodes several tokens per forward pass.

A `Proposer` drafts tokens that should follow a sequence; the engine feeds them after the
sequence's last token in the same forward pass, keeps the longest prefix the model agrees with
(plus the model's own next token) and tells the proposer what happened. A draft is a chain or
a tree: each token names the draft it follows, so several candidate continuations (or
LookaheadDecoding's 2-D window) are verified in one pass, each seeing only its ancestors.
Proposers work on token ids only and never see the model: a bad draft costs compute, never
correctness. The registry (`parafill.fillers`) maps filler names (`Node.filler`,
`--filler`) to proposers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Outcome:
    """What one verify step did for a sequence. For a chain, `draft[:accepted]` was kept and
    `predicted[accepted]` emitted after it; for a tree, the drafts on `path`."""

    draft: tuple[int, ...]  # the drafts verified (the engine may verify fewer than proposed)
    predicted: tuple[int, ...]  # the model's token after the last token and after each draft
    accepted: int  # how many drafts were kept (predicted[accepted] was emitted as well)
    parents: tuple[int, ...] = ()  # per verified draft, the one it follows (-1: last token)
    path: tuple[int, ...] = ()  # the kept drafts (indices into `draft`), in order
    nodes: tuple[int, ...] = ()  # per verified draft, its index in the proposer's Draft


@dataclass(frozen=True)
class Draft:
    """Drafted tokens with, per token, the proposer's estimate of the chance it is kept
    given that the ones before it were (the engine drafts as far as that pays)."""

    tokens: tuple[int, ...]
    confidence: tuple[float, ...]
    # per token, the index of the draft it follows (-1: the sequence's last token), always an
    # earlier index; () is a chain. Siblings are alternatives: their chances should sum to <= 1
    parents: tuple[int, ...] = ()


class Proposer(Protocol):
    def propose(self, tokens: Sequence[int], k: int) -> Draft | list[int]:
        """Up to k tokens that may follow `tokens` (prompt + output so far); [] for none.
        A plain list lets the engine estimate confidences from past acceptance."""
        ...

    def observe(self, outcome: Outcome) -> None:
        """Learn from a verify step (acceptance, the model's predictions)."""
        ...


@dataclass(frozen=True)
class Sources:
    """Token ids a proposer may draft from besides the sequence itself: text the plan gives
    the node (dependency outputs, the document an extraction reads)."""

    texts: tuple[tuple[int, ...], ...] = ()


Factory = Callable[[Sources], Proposer]
