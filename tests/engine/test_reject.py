"""Rejection sampling of a model's sampled draft, tested directly on chosen p and q: the token
emitted at a drafted position follows p exactly, and a rejection draws from the residual
max(p - q, 0) — not from p. No model: the distributions are set by hand so that the textbook
mistake moves the result far past the test's threshold."""

from __future__ import annotations

from collections import Counter
from functools import cache

import torch

from parafill.backends.engine.reject import reject
from parafill.backends.engine.sampling import GenParams

P = torch.tensor([0.50, 0.30, 0.15, 0.05])
Q = torch.tensor([0.10, 0.10, 0.20, 0.60])  # the drafter prefers what the target does not
DRAWS = 6_000
CHI2_3DF = 16.27  # 3 degrees of freedom, p = 0.001


def _chi2(counts: Counter[int], probs: torch.Tensor, n: int) -> float:
    exp = (probs * n).tolist()
    return sum((counts[t] - e) ** 2 / e for t, e in enumerate(exp) if e > 0)


@cache
def _emitted() -> tuple[Counter[int], Counter[int], int]:
    """(every emitted token, the tokens emitted where the draft was rejected, how many)."""
    params = GenParams(4, temperature=1.0)
    logits = P.log()[None].expand(2, -1).clone()  # the target's rows: p at each
    drafts = torch.multinomial(
        Q, DRAWS, replacement=True, generator=torch.Generator().manual_seed(7)
    )
    everything, residual = Counter[int](), Counter[int]()
    for seed, d in enumerate(drafts.tolist()):
        out = reject(logits, params, seed, 0, [d], Q[None], [0, 0])
        everything[out[0]] += 1
        if out[0] != d:  # a rejection (the residual is 0 at a rejected draft)
            residual[out[0]] += 1
    return everything, residual, DRAWS


def test_the_emitted_token_follows_p_whatever_q() -> None:
    """Mutation check: drawing a rejection from p instead of max(p - q, 0) (in reject.py,
    `rest = p[j]`) emits (0.40, 0.28, 0.24, 0.08) (min(p, q) + 0.6 p) instead of p: chi² ≈ 510
    against a threshold of 16.3 (measured: the test then fails)."""
    everything, _, n = _emitted()
    assert _chi2(everything, P, n) < CHI2_3DF, everything


def test_a_rejection_draws_from_the_residual() -> None:
    """Where the draft was rejected the token follows max(p - q, 0) normalised: here tokens 0
    and 1 only (p exceeds q nowhere else). With the textbook mistake (drawing from p), tokens
    2 and 3 appear in a quarter of the rejections."""
    _, residual, _ = _emitted()
    rest = (P - Q).clamp_min(0)
    rest = rest / rest.sum()
    rejected = sum(residual.values())
    assert rejected > DRAWS // 2  # P(reject) = sum(max(q - p, 0)) = 0.6
    assert residual[2] == 0 and residual[3] == 0, residual
    assert _chi2(residual, rest, rejected) < CHI2_3DF, residual
