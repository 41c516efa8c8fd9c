"""The `jacobi` filler: Jacobi (fixed-point) iteration with a lookahead n-gram pool.

Each verify step feeds the last token plus a guess of the next k tokens; the model's
prediction at every guessed position is the next iterate of the guess (Jacobi decoding), so
the part after the accepted prefix becomes the following step's guess. As in
LookaheadDecoding, n-grams are collected from these trajectories into a pool keyed by their
first token; a pool entry that continues the sequence's last token is drafted before the raw
iterate. Where neither exists the guess starts from the tokens that followed the last token's
latest occurrence in the context. Each draft carries the running hit rate of its source
(pool, iterate, context), learned from every verify step, so the engine drafts only as far
as it pays. This is the single-chain form (one candidate verified per step);
LookaheadDecoding's 2-D window verifies several at once.
"""

from __future__ import annotations

from collections.abc import Sequence

from parafill.fillers.base import Draft, Outcome, Sources

POOL, GUESS, CONTEXT = 0, 1, 2


class Jacobi:
    def __init__(self, sources: Sources | None = None, n: int = 4, pool_size: int = 8) -> None:
        self.n, self.pool_size = n, pool_size
        self.pool: dict[int, list[tuple[int, ...]]] = {}
        self.guess: list[int] = []
        self.last: dict[int, int] = {}  # token -> index after its latest occurrence in ctx
        self.ctx: list[int] = []
        self.hits = [0.3, 0.2, 0.2]  # per-token hit rate by source; learned in observe
        self.source = GUESS  # where the last draft came from
        for text in (sources or Sources()).texts:
            self._collect(text)

    def propose(self, tokens: Sequence[int], k: int) -> Draft:
        if k <= 0 or not tokens:
            return Draft((), ())
        self._follow(tokens)
        head = tokens[-1]
        gram = next((g for g in reversed(self.pool.get(head, [])) if g), None)
        if gram is not None:
            self.source, draft = POOL, list(gram[:k])
        elif self.guess:
            self.source, draft = GUESS, self.guess[:k]
        else:
            at = self.last.get(head)
            self.source, draft = CONTEXT, list(self.ctx[at : at + k]) if at is not None else []
        return Draft(tuple(draft), (self.hits[self.source],) * len(draft))

    def observe(self, outcome: Outcome) -> None:
        a = outcome.accepted
        tested = min(len(outcome.draft), a + 1)
        if tested:
            rate = a / tested
            self.hits[self.source] += 0.2 * (rate - self.hits[self.source])
        self.guess = list(outcome.predicted[a + 1 :])
        # the emitted token and the iterate after it are the trajectory's freshest n-gram
        self._collect(outcome.predicted[a:])

    def _collect(self, chain: Sequence[int]) -> None:
        for i in range(len(chain) - 1):
            gram = tuple(chain[i + 1 : i + self.n])
            bucket = self.pool.setdefault(chain[i], [])
            if gram in bucket:
                bucket.remove(gram)
            bucket.append(gram)
            del bucket[: -self.pool_size]

    def _follow(self, tokens: Sequence[int]) -> None:
        if len(tokens) < len(self.ctx):
            self.ctx, self.last = [], {}
        start = len(self.ctx)
        self.ctx.extend(tokens[start:])
        for i in range(max(0, start - 1), len(self.ctx) - 1):
            self.last[self.ctx[i]] = i + 1
