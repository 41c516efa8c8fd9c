"""Sequence state and the per-step choice of what to feed (pure Python, no torch).

A sequence has `fed` positions whose KV is written and `known` tokens (prompt + accepted
output; the last one is not fed yet). Each step feeds every decoding sequence its last token
plus the tokens drafted for it (k ragged per sequence, 0 allowed), then prompt chunks up to
the step's prefill budget. Rejected drafts move nothing: `fed` only counts accepted tokens.
Drafts form a tree (`parents`; a chain is the tree whose every draft follows the one before):
a draft's position is the sequence's next position plus its depth, and it sees its ancestors.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from parafill.backends.engine.params import GenParams
from parafill.fillers.base import Proposer

if TYPE_CHECKING:
    from parafill.constraints.matcher import Matcher


@dataclass(eq=False)
class Seq:
    id: int
    prompt: list[int]
    params: GenParams
    seed: int  # the draws' seed (sampled requests; see sampling.uniforms)
    prefix_only: bool = False  # holds a shared prefix for siblings; never samples
    generated: list[int] = field(default_factory=list)
    row: int = -1
    slot: int = -1
    cols: list[int] = field(default_factory=list)  # KV column of each position
    cols_arr: Any = None  # (cols, the same as an int32 tensor): ordered attention's key lists
    max_col: int = 0  # the highest column it holds (written or not)
    hi: int = -1  # the highest column among its first `hi_n` positions (`reach`'s cache)
    hi_n: int = 0
    fed: int = 0  # positions whose KV is written
    proposer: Proposer | None = None  # drafts tokens to verify (None: one token per step)
    matcher: Matcher | None = None  # its output constraint's state (None: unconstrained)
    draft: list[int] = field(default_factory=list)  # this step's drafts, after the last token
    parents: list[int] = field(default_factory=list)  # per draft, the draft it follows (-1: none)
    draft_cols: list[int] = field(default_factory=list)  # per draft, the KV column it writes
    scratch: list[int] = field(default_factory=list)  # columns borrowed for side branches
    nodes: list[int] = field(default_factory=list)  # per draft, its index in the proposal
    draft_q: Any = None  # (drafts, vocab): a model drafter's distributions where it sampled
    k: int = 4  # current draft length (adapted to acceptance)
    rate: float = 0.6  # running acceptance rate of its drafts
    expect: float = 0.0  # drafts of this step expected to be kept (their chances say)
    idle: int = 0  # consecutive offers the policy verified none of
    wait: int = 0  # steps left before its proposer is asked again
    seen: set[tuple[int, ...]] = field(default_factory=set)  # output n-grams (loop guard)
    passes: int = 0  # forward passes that fed this sequence
    drafted: int = 0
    accepted: int = 0

    @property
    def known(self) -> int:
        # the last sampled token is known but not yet fed
        return len(self.prompt) + len(self.generated)

    @property
    def done_feeding(self) -> bool:
        return self.fed >= self.known

    def token(self, pos: int) -> int:
        n = len(self.prompt)
        if pos < n:
            return self.prompt[pos]
        return self.generated[pos - n]


def reach(s: Seq, upto: int) -> int:
    """The highest KV column among the sequence's first `upto` positions: a step attends over
    the columns up to it (and its drafts'), not over every column the sequence holds for
    tokens it has not generated yet. `s.cols` is fixed at placement, so the maximum is kept
    incrementally."""
    if upto > s.hi_n:
        s.hi = max(s.hi, max(s.cols[s.hi_n : upto]))
        s.hi_n = upto
    return s.hi


def lineage(parents: Sequence[int]) -> list[list[int]]:
    """Per draft, the drafts from the first after the last token down to it (inclusive)."""
    out: list[list[int]] = []
    for j, p in enumerate(parents):
        out.append((out[p] if p >= 0 else []) + [j])
    return out


def main_line(parents: Sequence[int]) -> list[bool]:
    """Per draft, whether it is on the first-child chain (those write the sequence's own next
    columns; the other branches write borrowed ones, copied over where they are kept)."""
    on: list[bool] = []
    taken: set[int] = set()  # parents whose first child is already placed
    for p in parents:
        first = p not in taken
        taken.add(p)
        on.append(first and (p < 0 or on[p]))
    return on


def longest_match(
    tokens: list[int], seqs: Sequence[Seq], written_only: bool = False
) -> tuple[Seq | None, int]:
    """The sequence sharing the longest token prefix with `tokens` (KV-written part only)."""
    best: Seq | None = None
    best_len = 0
    for s in seqs:
        limit = s.fed if written_only else s.known
        n = len(os.path.commonprefix([tokens, (s.prompt + s.generated)[:limit]]))
        if n > best_len:
            best, best_len = s, n
    return best, best_len


def schedule(work: list[Seq], prefill_chunk: int) -> list[tuple[Seq, int]]:
    """Which sequences this step feeds and how many tokens each: every decoding sequence
    its last token plus its drafts, then prompt chunks in arrival order up to the budget."""
    decode = [s for s in work if s.known - s.fed == 1]
    prefill = [s for s in work if s.known - s.fed > 1]
    feeds: list[tuple[Seq, int]] = [(s, 1 + len(s.draft)) for s in decode]
    budget = prefill_chunk
    for s in prefill:
        if budget <= 0:
            break
        n = min(s.known - s.fed, budget)
        feeds.append((s, n))
        budget -= n
    return feeds
