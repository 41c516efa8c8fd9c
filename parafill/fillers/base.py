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


class Proposer(Protocol):
    def propose(self, tokens: Sequence[int], k: int) -> list[int]:
        """Up to k tokens that may follow `tokens` (prompt + output so far); [] for none."""
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
