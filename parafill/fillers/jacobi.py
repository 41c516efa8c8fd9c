"""The `jacobi` filler: Jacobi (fixed-point) iteration with a lookahead n-gram pool.

Each verify step feeds the last token plus a guess of the next k tokens; the model's
prediction at every guessed position is the next iterate of the guess (Jacobi decoding), so
the part after the accepted prefix becomes the following step's guess. As in
LookaheadDecoding, n-grams are collected from these trajectories into a pool keyed by their
first token; a pool entry that continues the sequence's last token is drafted before the raw
iterate. Where neither exists the guess starts from the tokens that followed the last token's
latest occurrence in the context. This is the single-chain form (one candidate verified per
step); LookaheadDecoding's 2-D window verifies several at once.
"""

from __future__ import annotations

from collections.abc import Sequence

from parafill.fillers.base import Outcome, Sources


class Jacobi:
    def __init__(self, sources: Sources | None = None, n: int = 4, pool_size: int = 8) -> None:
        self.n, self.pool_size = n, pool_size
        self.pool: dict[int, list[tuple[int, ...]]] = {}
        self.guess: list[int] = []
        self.last: dict[int, int] = {}  # token -> index after its latest occurrence in ctx
        self.ctx: list[int] = []
        for text in (sources or Sources()).texts:
            self._collect(text)

    def propose(self, tokens: Sequence[int], k: int) -> list[int]:
        if k <= 0 or not tokens:
            return []
        self._follow(tokens)
        head = tokens[-1]
        for gram in reversed(self.pool.get(head, [])):
            if gram:
                return list(gram[:k])
        if self.guess:
            return self.guess[:k]
        at = self.last.get(head)
        return list(self.ctx[at : at + k]) if at is not None else []

    def observe(self, outcome: Outcome) -> None:
        a = outcome.accepted
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
