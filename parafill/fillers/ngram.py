"""The `ngram` filler: prompt lookup plus ANPD-style adaptive n-gram tables, no model.

Tables map every n-gram (n = 1..max_n) seen so far to the token that followed its latest
occurrence, over the plan's source texts, the prompt and the accepted output (updated online
as tokens are accepted). A draft is grown one token at a time from the *longest* suffix of
(context + draft so far) found in the tables, so it copies spans verbatim where the text
repeats its input and can splice continuations it never saw whole. Order-1 matches are weak:
one such token ends the draft.
"""

from __future__ import annotations

from collections.abc import Sequence

from parafill.fillers.base import Outcome, Sources


class NGram:
    def __init__(self, sources: Sources | None = None, max_n: int = 6) -> None:
        self.max_n = max_n
        self.tables: list[dict[tuple[int, ...], int]] = [{} for _ in range(max_n + 1)]
        for text in (sources or Sources()).texts:
            self._index(list(text), 0)
        self.ctx: list[int] = []
        self.indexed = 0  # ctx[:indexed] n-grams (those with a next token) are in the tables

    def propose(self, tokens: Sequence[int], k: int) -> list[int]:
        if len(tokens) < len(self.ctx) or list(tokens[: len(self.ctx)]) != self.ctx:
            self.ctx, self.indexed = [], 0  # a different sequence: start over on its tokens
        self.ctx.extend(tokens[len(self.ctx) :])
        self.indexed = self._index(self.ctx, self.indexed)
        tail = self.ctx[-self.max_n :]
        draft: list[int] = []
        while len(draft) < k:
            nxt, order = self._next(tail)
            if nxt is None:
                break
            draft.append(nxt)
            tail = (tail + [nxt])[-self.max_n :]
            if order < 2:
                break
        return draft

    def observe(self, outcome: Outcome) -> None:
        """Accepted tokens reach the tables through the next `propose`'s context."""

    def _next(self, tail: list[int]) -> tuple[int | None, int]:
        for n in range(min(self.max_n, len(tail)), 0, -1):
            nxt = self.tables[n].get(tuple(tail[-n:]))
            if nxt is not None:
                return nxt, n
        return None, 0

    def _index(self, seq: list[int], start: int) -> int:
        """Add the n-grams ending at seq[start:-1] (each has a next token); returns the new end."""
        end = len(seq) - 1
        for i in range(start, end):
            nxt = seq[i + 1]
            for n in range(1, min(self.max_n, i + 1) + 1):
                self.tables[n][tuple(seq[i - n + 1 : i + 1])] = nxt
        return max(start, end)
