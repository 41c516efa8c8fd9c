"""The drafting policy without torch: step-cost interpolation, the greedy allocation that
drafts only while expected tokens per second rise, and draft-length / rate adaptation."""

from __future__ import annotations

import math

from parafill.backends.engine.spec import SpecPolicy, StepCost


def test_cost_table_interpolates_and_extrapolates() -> None:
    c = StepCost()
    assert c(5) is None
    c.add(1, 0.020)
    assert c(1) == 0.020 and c(9) == 0.020  # one width seen: flat
    c.add(3, 0.030)
    assert math.isclose(c(2) or 0, 0.025)
    assert math.isclose(c(5) or 0, 0.040)  # the last segment's slope
    assert c(0) == 0.020  # never below the narrowest seen
    c.add(3, 0.040)  # a running mean, not the last sample
    assert 0.030 < (c(3) or 0) < 0.040


def _policy(costs: dict[int, float]) -> SpecPolicy:
    p = SpecPolicy()
    for n, t in costs.items():
        p.cost.add(n, t)
    return p


def test_no_costs_yet_tries_a_few_drafts() -> None:
    assert SpecPolicy(explore=3).allocate(1, 1, [[0.5] * 8, [0.9] * 2]) == [3, 2]


def test_cheap_verification_drafts_deep_for_a_reliable_sequence() -> None:
    p = _policy({1: 0.020, 2: 0.021, 17: 0.030})
    ks = p.allocate(1, 1, [[0.9] * 16])
    assert ks[0] >= 8


def test_costly_verification_drafts_nothing() -> None:
    # each fed token costs as much as a whole step: no acceptance rate below 1 pays
    p = _policy({8: 0.080, 9: 0.090, 16: 0.160, 40: 0.400})
    assert p.allocate(8, 8, [[0.7] * 8] * 8) == [0] * 8


def test_allocation_prefers_the_likelier_drafts() -> None:
    p = _policy({4: 0.040, 5: 0.042, 8: 0.048, 12: 0.056, 20: 0.072})
    ks = p.allocate(4, 4, [[0.95] * 8, [0.2] * 8, [0.6] * 8, [0.0] * 8])
    assert ks[0] > ks[2] > ks[1] >= ks[3] == 0


def test_allocation_never_lowers_expected_throughput() -> None:
    p = _policy({1: 0.02, 2: 0.03, 3: 0.031, 5: 0.034, 9: 0.04})
    for rate in (0.1, 0.3, 0.5, 0.8, 0.95):
        (k,) = p.allocate(1, 1, [[rate] * 8])
        gain = 1 + sum(rate**j for j in range(1, k + 1))
        assert gain / (p.cost(1 + k) or 1) >= 1 / (p.cost(1) or 1) - 1e-12


def test_a_confident_head_is_taken_and_a_doubtful_tail_is_not() -> None:
    p = _policy({1: 0.02, 2: 0.03, 3: 0.031, 5: 0.034, 9: 0.04})
    (k,) = p.allocate(1, 1, [[0.95, 0.95, 0.95, 0.1, 0.9, 0.9]])
    assert k == 3


def test_draft_length_and_rate_adapt() -> None:
    p = SpecPolicy(k_max=16)
    assert p.next_k(4, 4, 4) == 8 and p.next_k(16, 16, 16) == 16
    assert p.next_k(8, 8, 2) == 3 and p.next_k(4, 0, 0) == 4
    r = p.next_rate(0.6, 8, 0)  # first draft rejected: one tested, none kept
    assert r < 0.6
    assert p.next_rate(0.2, 0, 0) > 0.2  # idle: back towards the prior
