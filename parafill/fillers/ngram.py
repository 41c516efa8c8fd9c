"""The `ngram` filler: prompt lookup plus ANPD-style adaptive n-gram tables, no model.

Tables map every n-gram (n = 1..max_n) seen so far to the token that followed its latest
occurrence, over the plan's source texts, the prompt and the accepted output (updated online
as tokens are accepted). A draft is grown one token at a time from the *longest* suffix of
(context + draft so far) found in the tables, so it copies spans verbatim where the text
repeats its input and can splice continuations it never saw whole. Where a shorter match
predicts a different next token, that alternative is drafted as a second branch (a tree
draft), so one verify step tests both. Each drafted token carries
the running hit rate of its match order (longer matches are right far more often: measured
on SmolLM2 answers to grounded MT-bench questions, 39% at order 1, 73% at 3, 89% at 6+),
updated from every verify step, so the engine drafts long where the text is being copied.
"""

from __future__ import annotations

from collections.abc import Sequence

from parafill.fillers.base import Draft, Outcome, Sources

# prior hit rate by match order (index); measured as in the module docstring
PRIOR = (0.0, 0.4, 0.5, 0.7, 0.8, 0.85, 0.9, 0.9, 0.9)


class NGram:
    def __init__(self, sources: Sources | None = None, max_n: int = 8, branch: bool = True) -> None:
        self.max_n, self.branch = max_n, branch
        self.tables: list[dict[tuple[int, ...], int]] = [{} for _ in range(max_n + 1)]
        self.hits = [PRIOR[min(n, len(PRIOR) - 1)] for n in range(max_n + 1)]
        self.orders: list[int] = []  # the match order behind each token of the last draft
        for text in (sources or Sources()).texts:
            self._index(list(text), 0)
        self.ctx: list[int] = []
        self.indexed = 0  # ctx[:indexed] n-grams (those with a next token) are in the tables

    def propose(self, tokens: Sequence[int], k: int) -> Draft:
        n = len(self.ctx)
        if len(tokens) < n or (n and tokens[n - 1] != self.ctx[-1]):
            # not a continuation of what was seen (checked at its last token, not scanned:
            # this runs every step): start over on these tokens
            self.ctx, self.indexed = [], 0
        self.ctx.extend(tokens[len(self.ctx) :])
        self.indexed = self._index(self.ctx, self.indexed)
        tail = self.ctx[-self.max_n :]
        draft, self.orders = self._grow(tail, k)
        conf = [self.hits[o] for o in self.orders]
        parents = list(range(-1, len(draft) - 1))
        alt, order = self._alternative(tail, draft[:1])
        if (
            alt is not None and k > 1 and self.branch
        ):  # a shorter match disagrees: verify its branch too
            more, orders = self._grow((tail + [alt])[-self.max_n :], k // 2 - 1)
            first = len(draft)
            parents += [-1] + list(range(first, first + len(more)))
            draft += [alt, *more]
            self.orders += [order, *orders]
            rest = 1.0 - (conf[0] if conf else 0.0)
            conf += [rest * self.hits[order]] + [self.hits[o] for o in orders]
        return Draft(tuple(draft), tuple(conf), tuple(parents))

    def _grow(self, tail: list[int], k: int) -> tuple[list[int], list[int]]:
        """Up to k tokens, each the continuation of the longest suffix match so far."""
        draft: list[int] = []
        orders: list[int] = []
        while len(draft) < k:
            nxt, order = self._next(tail)
            if nxt is None:
                break
            draft.append(nxt)
            orders.append(order)
            tail = (tail + [nxt])[-self.max_n :]
        return draft, orders

    def _alternative(self, tail: list[int], first: list[int]) -> tuple[int | None, int]:
        """The longest shorter match whose next token differs from the draft's first."""
        for n in range(min(self.max_n, len(tail)), 0, -1):
            nxt = self.tables[n].get(tuple(tail[-n:]))
            if nxt is not None and first and nxt != first[0]:
                return nxt, n
        return None, 0

    def observe(self, outcome: Outcome) -> None:
        """Update the hit rate of each order tested (a draft whose parent was kept);
        accepted tokens reach the tables through the next `propose`'s context."""
        kept = {outcome.nodes[j] for j in outcome.path} | {-1}
        parents = outcome.parents or tuple(range(-1, len(outcome.draft) - 1))
        nodes = outcome.nodes or tuple(range(len(outcome.draft)))
        for j, node in enumerate(nodes):
            p = parents[j]
            if node < len(self.orders) and (p == -1 or nodes[p] in kept):
                order = self.orders[node]
                self.hits[order] += 0.1 * ((node in kept) - self.hits[order])

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
