"""The `jacobi` filler: lookahead decoding (Jacobi iteration over a 2-D window, n-gram pool).

As in LookaheadDecoding (Fu et al., 2024), each step drafts one tree made of two branches:
- the **lookahead branch**, a window of `window` columns by up to `n - 1` levels. Level 0 is
  a chain of guesses for the next `window` positions; the token at level l of column i sits
  one position after level l - 1 of that column and sees level 0 up to column i and the
  levels below it in its column (a tree: level 0 is the trunk, each column grows a branch
  from it). The model's prediction after the top level of each column is the next iterate:
  it becomes a new top level, the oldest level is dropped, and each column's tokens plus
  that prediction form an n-gram for the pool (Jacobi iteration, run on every column at
  once);
- the **verification branch**: up to `candidates` pool n-grams whose first token is the
  sequence's last token, and the tokens that followed the last token's latest occurrence in
  the context, merged into a trie.
The engine keeps the longest path that agrees with the model, wherever it lies in the tree
(window paths included). Each draft carries the running hit rate of its source (pool,
window, context), learned from every verify step, so the engine's step-cost policy verifies
only as much as pays: on a CPU it usually prunes the window, and the filler falls back to its
pool and the context; where extra tokens per step are nearly free (a GPU at small batch) the
window runs and feeds the pool.
"""

from __future__ import annotations

from collections.abc import Sequence

from parafill.fillers.base import Draft, Outcome, Sources

POOL, WINDOW, CONTEXT = 0, 1, 2


class Jacobi:
    def __init__(
        self, sources: Sources | None = None, window: int = 5, n: int = 4, candidates: int = 4
    ) -> None:
        self.w, self.n, self.g = window, max(2, n), candidates
        self.pool: dict[int, list[tuple[int, ...]]] = {}
        self.levels: list[list[int]] = []  # the lookahead window, level 0 first
        self.last: dict[int, int] = {}  # token -> index after its latest occurrence in ctx
        self.ctx: list[int] = []
        self.hits = [0.4, 0.05, 0.3]  # per-token hit rate by source; learned in observe
        # the last draft: per node, its parent and source; window node of each (level, column)
        self.parents: list[int] = []
        self.sources: list[int] = []
        self.cells: dict[tuple[int, int], int] = {}
        for text in (sources or Sources()).texts:
            self._collect(text)

    def propose(self, tokens: Sequence[int], k: int) -> Draft:
        self.parents, self.sources, self.cells = [], [], {}
        if k <= 0 or not tokens:
            return Draft((), ())
        self._follow(tokens)
        head = tokens[-1]
        toks: list[int] = []
        for gram in list(reversed(self.pool.get(head, [])))[: self.g]:
            self._trie(toks, gram, POOL)
        at = self.last.get(head)
        if at is not None:
            self._trie(toks, self.ctx[at : at + self.n - 1], CONTEXT)
        first = sum(p == -1 for p in self.parents) or 1
        conf = [
            self.hits[s] / (first if p == -1 else 1)
            for p, s in zip(self.parents, self.sources, strict=True)
        ]
        if not self.levels:
            start = at if at is not None else max(0, len(self.ctx) - self.w)
            self.levels = [(self.ctx[start:] + self.ctx)[: self.w]]
        for i in range(len(self.levels[0])):
            for lv in range(len(self.levels)):
                parent = self.cells.get((lv - 1, i) if lv else (0, i - 1), -1)
                self.cells[(lv, i)] = self._node(toks, self.levels[lv][i], parent, WINDOW)
                conf.append(self.hits[WINDOW])
        return Draft(tuple(toks), tuple(conf), tuple(self.parents))

    def observe(self, outcome: Outcome) -> None:
        pred = {node: outcome.predicted[1 + j] for j, node in enumerate(outcome.nodes)}
        kept = {outcome.nodes[j] for j in outcome.path}
        for node in outcome.nodes:
            parent = self.parents[node] if node < len(self.parents) else -2
            if parent == -1 or parent in kept:  # it was tested: its parent was kept
                src = self.sources[node]
                self.hits[src] += 0.1 * ((node in kept) - self.hits[src])
        if self.cells and all(c in pred for c in self.cells.values()):
            self._advance(pred)

    def _advance(self, pred: dict[int, int]) -> None:
        """Jacobi step on every column: the prediction after its top level is the next one;
        a full column (n - 1 levels) plus that prediction is an n-gram for the pool."""
        top = len(self.levels) - 1
        new = [pred[self.cells[(top, i)]] for i in range(len(self.levels[0]))]
        if len(self.levels) == self.n - 1:
            for i, nxt in enumerate(new):
                self._add(self.levels[0][i], (*(level[i] for level in self.levels[1:]), nxt))
            self.levels = self.levels[1:]
        self.levels.append(new)
        if not self.levels[0]:
            self.levels = []

    def _node(self, toks: list[int], token: int, parent: int, source: int) -> int:
        toks.append(token)
        self.parents.append(parent)
        self.sources.append(source)
        return len(toks) - 1

    def _trie(self, toks: list[int], chain: Sequence[int], source: int) -> None:
        """Add a candidate continuation under the last token, sharing common prefixes."""
        node = -1
        for t in chain:
            same = [j for j, p in enumerate(self.parents) if p == node and toks[j] == t]
            node = same[0] if same else self._node(toks, t, node, source)

    def _collect(self, chain: Sequence[int]) -> None:
        for i in range(len(chain) - 1):
            self._add(chain[i], tuple(chain[i + 1 : i + self.n]))

    def _add(self, key: int, gram: tuple[int, ...]) -> None:
        bucket = self.pool.setdefault(key, [])
        if gram in bucket:
            bucket.remove(gram)
        bucket.append(gram)
        del bucket[: -self.g * 2]

    def _follow(self, tokens: Sequence[int]) -> None:
        n = len(self.ctx)
        if len(tokens) < n or (n and tokens[n - 1] != self.ctx[-1]):
            self.ctx, self.last = [], {}
        start = len(self.ctx)
        self.ctx.extend(tokens[start:])
        for i in range(max(0, start - 1), len(self.ctx) - 1):
            self.last[self.ctx[i]] = i + 1
