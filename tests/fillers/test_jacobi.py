"""The lookahead filler's own bookkeeping (no model): the 2-D window's tree, the Jacobi step
on every column, and n-grams entering the pool once a column is full."""

from __future__ import annotations

from parafill.fillers.base import Outcome, Sources
from parafill.fillers.jacobi import Jacobi


def _feed_all(j: Jacobi, ctx: list[int], predicted_after: dict[int, int]) -> Outcome:
    """Verify the whole last draft; the model predicts `predicted_after[token]` (else 0)."""
    d = j.propose(ctx, 16)
    pred = [predicted_after.get(ctx[-1], 0)] + [predicted_after.get(t, 0) for t in d.tokens]
    o = Outcome(d.tokens, tuple(pred), 0, d.parents, (), tuple(range(len(d.tokens))))
    j.observe(o)
    return o


def test_window_is_a_tree_of_columns_over_a_level_zero_chain() -> None:
    j = Jacobi(window=3, n=4, candidates=2)
    ctx = [1, 2, 3, 4, 5, 6]
    _feed_all(j, ctx, {t: t + 10 for t in range(100)})
    _feed_all(j, ctx, {t: t + 10 for t in range(100)})
    d = j.propose(ctx, 16)
    cells = j.cells
    assert len(j.levels) == 3 and len(cells) == 9
    for (lv, i), node in cells.items():
        want = cells.get((lv - 1, i) if lv else (0, i - 1), -1)
        assert d.parents[node] == want  # level 0 a chain; each column stacked on it
        assert d.tokens[node] == j.levels[lv][i]
    # the Jacobi step: each level is the model's prediction after the level below
    assert j.levels[1] == [t + 10 for t in j.levels[0]]
    assert j.levels[2] == [t + 10 for t in j.levels[1]]


def test_full_columns_put_ngrams_in_the_pool_and_they_are_drafted() -> None:
    j = Jacobi(window=2, n=3, candidates=2)
    ctx = [7, 8, 9]
    step = {t: t + 1 for t in range(200)}
    for _ in range(3):
        _feed_all(j, ctx, step)
    grams = [g for bucket in j.pool.values() for g in bucket]
    assert grams and all(g == (k + 1, k + 2) for k, b in j.pool.items() for g in b)
    # a pool entry starting at the last token is drafted first, under the last token
    j.pool[9] = [(10, 11)]
    d = j.propose(ctx, 16)
    assert d.tokens[:2] == (10, 11) and d.parents[:2] == (-1, 0)


def test_sources_and_context_seed_the_verification_branch() -> None:
    j = Jacobi(Sources(((5, 6, 7, 8),)), window=2, n=4)
    d = j.propose([1, 5], 16)
    roots = [t for t, p in zip(d.tokens, d.parents, strict=True) if p == -1]
    assert 6 in roots  # the source text's continuation of 5
    kids = [d.tokens[c] for c, p in enumerate(d.parents) if p >= 0 and d.tokens[p] == 6]
    assert 7 in kids


def test_hit_rates_learn_from_what_was_kept() -> None:
    j = Jacobi(Sources(((5, 6, 7),)), window=2, n=3)
    before = j.hits[0]
    for _ in range(5):
        d = j.propose([1, 5], 16)
        a, b = d.tokens.index(6), d.tokens.index(7)
        pred = [0] * (len(d.tokens) + 1)
        pred[0], pred[1 + a] = 6, 7
        o = Outcome(d.tokens, tuple(pred), 2, d.parents, (a, b), tuple(range(len(d.tokens))))
        j.observe(o)
    assert j.hits[0] > before
