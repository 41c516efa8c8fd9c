"""When and how far to speculate: per-sequence draft length and a measured step-cost rule.

Pure Python (no torch). A step costs about `base + per_token * N` seconds for N fed tokens
(fitted online from the engine's own steps). Drafting k more tokens for a sequence costs
`per_token * k`; it pays when the tokens it is expected to add per second of that cost beat
the step's current rate (tokens out per second). On a wide batch, or for a sequence whose
drafts keep failing, that rule turns drafting off; a sequence left off drifts back towards
the prior so it is retried now and then.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StepCost:
    """Exponentially weighted least squares of step seconds on fed tokens."""

    decay: float = 0.95
    n: float = 0.0
    sx: float = 0.0
    sy: float = 0.0
    sxx: float = 0.0
    sxy: float = 0.0

    def add(self, tokens: int, seconds: float) -> None:
        d = self.decay
        self.n = d * self.n + 1
        self.sx = d * self.sx + tokens
        self.sy = d * self.sy + seconds
        self.sxx = d * self.sxx + tokens * tokens
        self.sxy = d * self.sxy + tokens * seconds

    def fit(self) -> tuple[float, float] | None:
        """(base, per_token) seconds, or None before two distinct widths were seen."""
        var = self.n * self.sxx - self.sx * self.sx
        if self.n < 2 or var <= 1e-9 * max(1.0, self.sxx):
            return None
        per = max(0.0, (self.n * self.sxy - self.sx * self.sy) / var)
        base = max(1e-9, (self.sy - per * self.sx) / self.n)
        return base, per


@dataclass
class SpecPolicy:
    k_max: int = 8
    k_min: int = 1
    prior: float = 0.6  # assumed acceptance rate of a fresh sequence
    cost: StepCost = field(default_factory=StepCost)

    def threshold(self, width: int) -> float:
        """The acceptance rate a draft token must beat in a step of `width` sequences."""
        fit = self.cost.fit()
        if fit is None:
            return 0.0
        base, per = fit
        return per * width / (base + per * width)

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


def affordable(k: int, rate: float, bar: float) -> int:
    """Drafts worth verifying: the j-th draft is kept with probability about rate**j, and is
    worth its cost while that beats `bar` (the step's break-even acceptance)."""
    if bar <= 0.0 or rate >= 1.0:
        return k
    if rate <= bar:
        return 0
    j = 1
    while j < k and rate ** (j + 1) > bar:
        j += 1
    return j
