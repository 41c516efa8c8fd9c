"""The drafting policy without torch: the shape-aware step-cost fit, the greedy allocation
that drafts only while expected tokens per second rise, and draft-length / rate adaptation."""

from __future__ import annotations

import math

from parafill.backends.engine.spec import Shape, SpecPolicy, StepCost


def _true_cost(s: Shape) -> float:
    # 20 ms fixed, +5 ms once more than one token, 1 ms per token, attention 0.2 ms per 1e4
    return 0.020 + 0.005 * (s.tokens > 1) + 0.001 * s.tokens + 0.0002 * s.slots * s.length / 1e4


def _fitted(shapes: list[Shape]) -> StepCost:
    c = StepCost()
    for s in shapes:
        c.add(s, _true_cost(s))
    return c


SHAPES = [
    Shape(n, n * q, length)
    for n in (1, 2, 5, 9, 17, 8, 32)
    for q in (1, 3)
    for length in (100, 600)
]


def test_cost_fit_recovers_a_linear_cost() -> None:
    c = StepCost()
    assert c(Shape(1, 1, 10)) is None
    c = _fitted(SHAPES)
    for s in (Shape(1, 1, 300), Shape(12, 40, 300), Shape(50, 50, 900)):
        assert math.isclose(c(s) or 0, _true_cost(s), rel_tol=1e-3), s


def test_cost_fit_never_goes_negative() -> None:
    c = StepCost()
    for n in range(1, 12):  # cost that falls with tokens: the fit clamps at zero slope
        c.add(Shape(n, n, 100), 0.05 - 0.001 * n)
    assert c.coef is not None and min(c.coef) >= 0


def _policy(shapes: list[Shape] = SHAPES) -> SpecPolicy:
    p = SpecPolicy()
    p.cost = _fitted(shapes)
    return p


def test_no_costs_yet_tries_a_few_drafts() -> None:
    asks = [[0.5] * 8, [0.9] * 2, [0.7] * 1, [0.1] * 5]
    assert SpecPolicy(explore=2).allocate(Shape(1, 1, 9), 1, 1, asks) == [0, 2, 1, 0]


def test_cheap_verification_drafts_deep_for_a_reliable_sequence() -> None:
    (k,) = _policy().allocate(Shape(1, 1, 200), 0, 1, [[0.95] * 16])
    assert k >= 8


def test_wide_batch_drafts_nothing_when_tokens_cost_more_than_they_bring() -> None:
    p = SpecPolicy()
    for n in (8, 9, 16, 24, 40, 8, 9, 16):  # every fed token costs as much as a whole step
        p.cost.add(Shape(n, n, 100), 0.010 * n)
    assert p.allocate(Shape(8, 8, 100), 0, 8, [[0.7] * 8] * 8) == [0] * 8


def test_rows_padding_makes_long_drafts_dearer_than_in_tree_packing() -> None:
    p = SpecPolicy()
    for s in SHAPES:  # attention dominates: 3 ms per 1e4 slot-columns
        p.cost.add(s, 0.02 + 0.001 * s.tokens + 0.003 * s.slots * s.length / 1e4)
    asks = [[0.9] * 16] + [[0.3] * 16] * 15
    rows = p.allocate(Shape(16, 16, 800), 16, 16, asks)
    tree = p.allocate(Shape(16, 16, 800), 0, 16, asks)
    assert sum(rows) < sum(tree)
    assert rows[0] >= max(rows[1:])


def test_allocation_prefers_the_likelier_drafts() -> None:
    ks = _policy().allocate(Shape(4, 4, 200), 0, 4, [[0.95] * 8, [0.2] * 8, [0.6] * 8, [0.0] * 8])
    assert ks[0] >= ks[2] >= ks[1] >= ks[3] == 0 and ks[0] > ks[1]


def test_allocation_never_lowers_expected_throughput() -> None:
    p = _policy()
    for rate in (0.05, 0.3, 0.5, 0.8, 0.95):
        (k,) = p.allocate(Shape(1, 1, 300), 0, 1, [[rate] * 8])
        gain = 1 + sum(rate**j for j in range(1, k + 1))
        with_drafts = p.cost(Shape(1 + k, 1 + k, 300)) or 1
        assert gain / with_drafts >= 1 / (p.cost(Shape(1, 1, 300)) or 1) - 1e-12


def test_a_confident_head_is_taken_and_a_doubtful_tail_is_not() -> None:
    (k,) = _policy().allocate(Shape(1, 1, 300), 0, 1, [[0.95, 0.95, 0.95, 0.02, 0.9, 0.9]])
    assert k == 3


def test_draft_length_and_rate_adapt() -> None:
    p = SpecPolicy(k_max=16)
    assert p.next_k(4, 4, 4) == 8 and p.next_k(16, 16, 16) == 16
    assert p.next_k(8, 8, 2) == 3 and p.next_k(4, 0, 0) == 4
    assert p.next_rate(0.6, 8, 0) < 0.6  # first draft rejected: one tested, none kept
    assert p.next_rate(0.2, 0, 0) > 0.2  # idle: back towards the prior


def test_one_stall_does_not_swamp_the_fit() -> None:
    c = _fitted(SHAPES)
    s = Shape(9, 9, 300)
    before = c(s) or 0
    c.add(s, 100 * before)  # another process held the CPU for this step
    assert (c(s) or 0) < 1.2 * before


def test_arms_stop_drafting_where_measured_steps_without_drafts_are_faster() -> None:
    from parafill.backends.engine.spec import Arms

    arms = Arms(probe=4, least=3, warm=4)
    allowed = []
    for _ in range(60):
        ok = arms.allow(32)
        allowed.append(ok)
        # at width 32, steps with drafts give 300 tokens/s, steps without 400
        arms.record(32, ok, 300 if ok else 400, 1.0)
    late = allowed[-20:]
    assert sum(late) == 5  # drafting only on the probe steps (every 4th)
    assert arms.rates[(32, False)] > arms.rates[(32, True)]


def test_arms_keep_drafting_where_it_is_faster_and_probe_plain_steps() -> None:
    from parafill.backends.engine.spec import Arms

    arms = Arms(probe=4, least=3, warm=4)
    allowed = []
    for _ in range(60):
        ok = arms.allow(1)
        allowed.append(ok)
        arms.record(1, ok, 90 if ok else 45, 1.0)
    assert sum(allowed[-20:]) == 15  # plain only on the probe steps
    assert Arms.width(1) == 1 and Arms.width(5) == 8 and Arms.width(32) == 32
