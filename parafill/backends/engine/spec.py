"""How many tokens to draft for each sequence this step, from measured step costs.

Pure Python (no torch). The engine records how long each eager decode / verify step took and
its shape (`StepCost`: tokens fed, attention query slots x KV length — rows mode pads every
row to its longest feed — fitted by non-negative weighted least squares). A
sequence's j-th draft is kept with the product of its drafts' chances (the proposer's own
estimates, or the sequence's running acceptance rate). `SpecPolicy.allocate` adds drafts in
order of that value while the expected tokens out per second of the whole step still rise,
so drafting happens only where the measured costs say it pays: on a wide batch, or for a
sequence whose drafts keep failing, it stops. A sequence left without drafts drifts back
towards the prior rate and is retried.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Shape:
    """What a step's cost depends on: tokens fed, the attention's query slots (rows mode pads
    every row to its longest feed: rows x longest; tree packing: the tokens) and the KV
    columns attended."""

    tokens: int
    slots: int
    length: int

    def features(self) -> tuple[float, ...]:
        # a fixed cost, the jump from one row to a matrix product, per token, attention work
        return (1.0, float(self.tokens > 1), float(self.tokens), self.slots * self.length / 1e4)


@dataclass
class StepCost:
    """Step seconds as a non-negative linear function of `Shape.features`, fitted by
    exponentially weighted least squares over the engine's own decode / verify steps."""

    decay: float = 0.98
    seen: float = 0.0
    xx: list[list[float]] = field(default_factory=lambda: [[0.0] * 4 for _ in range(4)])
    xy: list[float] = field(default_factory=lambda: [0.0] * 4)
    coef: list[float] | None = None

    def add(self, shape: Shape, seconds: float) -> None:
        """Record a timed step; a stall far above the fit (another process, a page fault)
        counts as at most twice the estimate, so one outlier cannot switch drafting off."""
        guess = self(shape)
        if guess is not None and guess > 0:
            seconds = min(seconds, 2.0 * guess)
        f = shape.features()
        for a in range(4):
            self.xy[a] = self.decay * self.xy[a] + f[a] * seconds
            for b in range(4):
                self.xx[a][b] = self.decay * self.xx[a][b] + f[a] * f[b]
        self.seen = self.decay * self.seen + 1
        self.coef = _nonneg_solve(self.xx, self.xy) if self.seen >= 6 else None

    def __call__(self, shape: Shape) -> float | None:
        """Estimated seconds for a step of this shape; None until enough steps were timed."""
        if self.coef is None:
            return None
        return sum(c * x for c, x in zip(self.coef, shape.features(), strict=True))


def _nonneg_solve(xx: list[list[float]], xy: list[float]) -> list[float]:
    """Least squares with every coefficient >= 0 (a negative one dropped and refitted)."""
    active = list(range(len(xy)))
    while True:
        sol = _solve([[xx[a][b] for b in active] for a in active], [xy[a] for a in active])
        if all(v >= 0 for v in sol) or len(active) == 1:
            out = [0.0] * len(xy)
            for a, v in zip(active, sol, strict=True):
                out[a] = max(v, 0.0)
            return out
        active = [a for a, v in zip(active, sol, strict=True) if v >= 0] or active[:1]


def _solve(m: list[list[float]], v: list[float]) -> list[float]:
    """Gaussian elimination with a small ridge (tiny systems only)."""
    n = len(v)
    a = [row[:] + [v[i]] for i, row in enumerate(m)]
    for i in range(n):
        a[i][i] += 1e-9 * (1.0 + abs(a[i][i]))
    for c in range(n):
        p = max(range(c, n), key=lambda r: abs(a[r][c]))
        a[c], a[p] = a[p], a[c]
        if abs(a[c][c]) < 1e-18:
            continue
        for r in range(n):
            if r != c:
                f = a[r][c] / a[c][c]
                a[r] = [x - f * y for x, y in zip(a[r], a[c], strict=True)]
    return [a[i][n] / a[i][i] if abs(a[i][i]) > 1e-18 else 0.0 for i in range(n)]


@dataclass
class SpecPolicy:
    k_max: int = 16
    k_min: int = 1
    prior: float = 0.6  # assumed acceptance rate of a fresh sequence
    explore: int = 4  # sequences that draft (2 tokens) while too few steps have been timed
    margin: float = 1.05
    cost: StepCost = field(default_factory=StepCost)
    # calibration: drafts kept vs the kept count the chances predicted (running sums); every
    # value is scaled by their ratio, so over-confident proposers are trusted less
    predicted: float = 1.0
    kept: float = 1.0

    def calibrate(self, predicted: float, kept: int) -> None:
        self.predicted = 0.98 * self.predicted + predicted
        self.kept = 0.98 * self.kept + kept

    @property
    def trust(self) -> float:
        return min(1.0, max(0.1, self.kept / max(self.predicted, 1e-9)))

    @staticmethod
    def expected(chances: list[float]) -> float:
        """Drafts expected to be kept: the sum of the running products of their chances."""
        total, value = 0.0, 1.0
        for c in chances:
            value *= c
            total += value
        return total

    def allocate(self, step: Shape, rows: int, out: int, asks: list[list[float]]) -> list[int]:
        """Drafts to verify per sequence. `step`: the step without drafts; `rows`: batch rows
        (0 in tree packing, where drafts add query slots one for one); `out`: tokens the step
        yields without drafts; `asks`: per sequence, the chance each offered draft is kept
        given the ones before it were. The j-th draft of a sequence is worth the product of
        its first j chances; drafts are taken best first while the expected tokens out per
        second of the step rise."""
        base = self.cost(step)
        if base is None:  # no costs yet: a few short drafts, the likeliest first, to time
            first = sorted(range(len(asks)), key=lambda i: -(asks[i] or [0.0])[0])
            ks = [0] * len(asks)
            for i in first[: self.explore]:
                ks[i] = min(len(asks[i]), 2)
            return ks
        offers = []
        for i, chances in enumerate(asks):
            value = self.trust
            for j, c in enumerate(chances):
                value *= c
                offers.append((-value, j, i))
        offers.sort()
        # drafting must promise `margin` more tokens per second than not drafting: the fit is
        # an estimate, and a wrong bet costs time
        best, best_rate, gain = 0, self.margin * out / max(base, 1e-9), float(out)
        widest = step.slots // rows if rows else 0  # query slots per row before drafts
        for d, (neg, j, _) in enumerate(offers, 1):
            gain -= neg
            widest = max(widest, j + 2) if rows else 0
            slots = rows * widest if rows else step.slots + d
            t = self.cost(Shape(step.tokens + d, slots, step.length))
            if t is not None and t > 0 and gain / t > best_rate:
                best, best_rate = d, gain / t
        ks = [0] * len(asks)
        for _, _, i in offers[:best]:
            ks[i] += 1
        return ks

    def depth(
        self, step: Shape, rows: int, out: int, rates: list[float], forward: float, most: int
    ) -> int:
        """Tokens a model drafter should draft for each of these sequences this step, one
        drafter forward (`forward` seconds) per token: the depth with the highest expected
        tokens out per second of the whole step, drafter time included; 0 where none beats
        the step without drafts by `margin`; `most` while costs are not measured yet.
        `rates`: each sequence's running acceptance rate. Arguments as in `allocate`."""
        base = self.cost(step)
        if base is None or forward <= 0:
            return most
        best, best_rate, gain = 0, self.margin * out / max(base, 1e-9), float(out)
        run = [1.0] * len(rates)
        widest = step.slots // rows if rows else 0
        for d in range(1, most + 1):
            for i, r in enumerate(rates):
                run[i] *= self.trust * r
                gain += run[i]
            slots = rows * max(widest, d + 1) if rows else step.slots + d * len(rates)
            t = self.cost(Shape(step.tokens + d * len(rates), slots, step.length))
            if t is not None and gain / (t + d * forward) > best_rate:
                best, best_rate = d, gain / (t + d * forward)
        return best

    def next_k(self, k: int, drafted: int, accepted: int) -> int:
        """Grow the draft length on full acceptance, shrink it to what was kept otherwise."""
        if drafted and accepted == drafted:
            return min(self.k_max, k * 2)
        return max(self.k_min, accepted + 1) if drafted else k

    def next_rate(self, rate: float, drafted: int, accepted: int) -> float:
        """A running per-draft acceptance rate; with nothing drafted it drifts to the prior."""
        if drafted:  # drafts after the first rejected one were never tested
            return rate + 0.3 * (accepted / min(drafted, accepted + 1) - rate)
        return rate + 0.01 * (self.prior - rate)


@dataclass
class Arms:
    """The measured check that drafting pays: per batch width (decoding sequences, rounded up
    to a power of two), running tokens-out-per-second of decode steps that verified drafts
    and of steps that did not. Once both are measured, drafting goes on only where it is at
    least as fast; every `probe`-th step at a width runs the other way, so a change (longer
    contexts, other text) is seen. This bounds what a wrong cost fit can lose."""

    probe: int = 16
    least: int = 6  # steps of each kind before the comparison counts
    warm: int = 4  # while warming up, every warm-th step runs plain
    rates: dict[tuple[int, bool], float] = field(default_factory=dict)
    seen: dict[tuple[int, bool], int] = field(default_factory=dict)
    steps: dict[int, int] = field(default_factory=dict)

    def allow(self, width: int) -> bool:
        """Whether this step may draft (the policy still chooses how much)."""
        n = self.steps[width] = self.steps.get(width, 0) + 1
        if min(self.seen.get((width, True), 0), self.seen.get((width, False), 0)) < self.least:
            # warming up: every `warm`-th step plain until plain steps have been timed enough
            return n % self.warm != 0 or self.seen.get((width, False), 0) >= self.least
        better = self.rates[(width, True)] >= self.rates[(width, False)]
        return better != (n % self.probe == 0)

    def losing(self, width: int) -> bool:
        """Whether drafting is measured slower than plain steps at this width."""
        if min(self.seen.get((width, True), 0), self.seen.get((width, False), 0)) < self.least:
            return False
        return self.rates[(width, True)] < self.rates[(width, False)]

    def record(self, width: int, drafted: bool, tokens: int, seconds: float) -> None:
        if seconds <= 0:
            return
        key = (width, drafted)
        rate = tokens / seconds
        old = self.rates.get(key)
        self.rates[key] = rate if old is None else old + 0.1 * (rate - old)
        self.seen[key] = self.seen.get(key, 0) + 1

    @staticmethod
    def width(decoding: int) -> int:
        return 1 << max(0, decoding - 1).bit_length()
