"""Sequence state and the per-step choice of what to feed (pure Python, no torch).

A sequence has `fed` positions whose KV is written and `known` tokens (prompt + accepted
output; the last one is not fed yet). Each step feeds every decoding sequence its last token
plus the tokens drafted for it (k ragged per sequence, 0 allowed), then prompt chunks up to
the step's prefill budget. Rejected drafts move nothing: `fed` only counts accepted tokens.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from parafill.backends.engine.params import GenParams
from parafill.fillers.base import Proposer


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
    max_col: int = 0
    fed: int = 0  # positions whose KV is written
    proposer: Proposer | None = None  # drafts tokens to verify (None: one token per step)
    draft: list[int] = field(default_factory=list)  # this step's drafts, after the last token
    k: int = 4  # current draft length (adapted to acceptance)
    rate: float = 0.6  # running acceptance rate of its drafts
    expect: float = 0.0  # drafts of this step expected to be kept (their chances say)
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
        n, g = len(self.prompt), len(self.generated)
        if pos < n:
            return self.prompt[pos]
        return self.generated[pos - n] if pos < n + g else self.draft[pos - n - g]


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
