"""The filler protocol: how a node decodes several tokens per forward pass.

A `Proposer` drafts tokens that should follow a sequence; the engine feeds them after the
sequence's last token in the same forward pass, keeps the longest prefix the model agrees with
(plus the model's own next token) and tells the proposer what happened. Proposers work on
token ids only and never see the model: a bad draft costs compute, never correctness. The
registry (`parafill.fillers`) maps filler names (`Node.filler`, `--filler`) to proposers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Outcome:
    """What one verify step did for a sequence."""

    draft: tuple[int, ...]  # the tokens proposed
    predicted: tuple[int, ...]  # the model's token after the last token and after each draft
    accepted: int  # how many drafts were kept (predicted[accepted] was emitted as well)


@dataclass(frozen=True)
class Draft:
    """Drafted tokens with, per token, the proposer's estimate of the chance it is kept
    given that the ones before it were (the engine drafts as far as that pays)."""

    tokens: tuple[int, ...]
    confidence: tuple[float, ...]


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
