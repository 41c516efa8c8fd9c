"""How many tokens to draft for each sequence this step, from measured step costs.

Pure Python (no torch). The engine records how long each eager step took for the number of
tokens it fed (`StepCost`: a running mean per width, interpolated between widths seen). A
sequence's j-th draft is kept with the product of its drafts' chances (the proposer's own
estimates, or the sequence's running acceptance rate). `SpecPolicy.allocate` adds drafts in
order of that value while the expected tokens out per second of the whole step still rise,
so drafting happens only where the measured costs say it pays: on a wide batch, or for a
sequence whose drafts keep failing, it stops. A sequence left without drafts drifts back
towards the prior rate and is retried.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field


@dataclass
class StepCost:
    """Seconds per step by tokens fed: a running mean per width, linear in between."""

    weight: float = 0.2
    means: dict[int, float] = field(default_factory=dict)

    def add(self, tokens: int, seconds: float) -> None:
        old = self.means.get(tokens)
        self.means[tokens] = seconds if old is None else old + self.weight * (seconds - old)

    def __call__(self, tokens: int) -> float | None:
        """Estimated seconds for a step of `tokens`; None before any step was timed."""
        if tokens in self.means:
            return self.means[tokens]
        if not self.means:
            return None
        xs = sorted(self.means)
        i = bisect.bisect_left(xs, tokens)
        if 0 < i < len(xs):
            a, b = xs[i - 1], xs[i]
            return self.means[a] + (tokens - a) / (b - a) * (self.means[b] - self.means[a])
        edge = xs[0] if i == 0 else xs[-1]
        if len(xs) == 1:
            return self.means[edge]  # one width seen: assume flat until another is timed
        a, b = (xs[0], xs[1]) if i == 0 else (xs[-2], xs[-1])
        slope = max(0.0, (self.means[b] - self.means[a]) / (b - a))
        # beyond the widths seen: the nearest segment's slope, never cheaper than the edge
        return max(self.means[edge], self.means[edge] + slope * (tokens - edge))


@dataclass
class SpecPolicy:
    k_max: int = 16
    k_min: int = 1
    prior: float = 0.6  # assumed acceptance rate of a fresh sequence
    explore: int = 4  # drafts a sequence may try while no verify step has been timed
    cost: StepCost = field(default_factory=StepCost)

    def allocate(self, fed: int, out: int, asks: list[list[float]]) -> list[int]:
        """Drafts to verify per sequence. `fed`: tokens the step feeds without drafts, `out`:
        tokens it yields without them, `asks`: per sequence, the chance each offered draft
        is kept given the ones before it were. The j-th draft of a sequence is worth the
        product of its first j chances; drafts are taken best first while the expected
        tokens out per second of the step rise."""
        base = self.cost(fed)
        if base is None:
            return [min(len(a), self.explore) for a in asks]  # no costs yet: try a few
        offers = []
        for i, chances in enumerate(asks):
            value = 1.0
            for j, c in enumerate(chances):
                value *= c
                offers.append((-value, j, i))
        offers.sort()
        best, best_rate, gain = 0, out / base, float(out)
        for d, (neg, _, _) in enumerate(offers, 1):
            gain -= neg
            t = self.cost(fed + d)
            if t is not None and gain / t > best_rate:
                best, best_rate = d, gain / t
        ks = [0] * len(asks)
        for _, _, i in offers[:best]:
            ks[i] += 1
        return ks

    def next_k(self, k: int, drafted: int, accepted: int) -> int:
        """Grow the draft length on full acceptance, shrink it to what was kept otherwise."""
        if drafted and accepted == drafted:
            return min(self.k_max, k * 2)
        return max(self.k_min, accepted + 1) if drafted else k

    def next_rate(self, rate: float, drafted: int, accepted: int) -> float:
        """A running per-draft acceptance rate; with nothing drafted it drifts to the prior."""
        if drafted:  # drafts after the first rejected one were never tested
            return rate + 0.3 * (accepted / min(drafted, accepted + 1) - rate)
        return rate + 0.05 * (self.prior - rate)
