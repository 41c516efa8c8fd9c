"""Verifying a model's sampled draft: rejection sampling with the drafter's distribution q.

Draft d_j was drawn from q_j, the drafter's distribution at that point. Logits row j of the
target gives p_j, the request's own sampling distribution (penalties, temperature, top-p).
d_j is kept with probability min(1, p_j(d_j) / q_j(d_j)); at the first rejection the token
is drawn from max(p_j - q_j, 0), normalised; when every draft is kept, the token after them is
the request's plain draw from p. The emitted tokens then follow p exactly, whatever q is
(Leviathan et al. 2023, Chen et al. 2023). The uniforms are counter-based hashes of (the
request's seed xor a stream constant, the index of the token), so a seeded request repeats.
"""

from __future__ import annotations

import torch
from torch import Tensor

from parafill.backends.engine.params import GenParams
from parafill.backends.engine.sampling import uniforms

ACCEPT_STREAM = 0x68E31DA4
RESIDUAL_STREAM = 0x1B56C4E9


def distribution(chooser: Tensor, params: GenParams) -> Tensor:
    """(n, V) probabilities the request samples from: temperature, then the top-p nucleus
    (the tokens before the cumulative mass reaches top_p, the top one always), renormalised."""
    p = torch.softmax(chooser.float() / params.temperature, dim=-1)
    if params.top_p >= 1.0:
        return p
    sorted_p, order = p.sort(dim=-1, descending=True, stable=True)
    keep = (sorted_p.cumsum(dim=-1) - sorted_p) < params.top_p
    kept = torch.zeros_like(p).scatter_(1, order, sorted_p * keep)
    return kept / kept.sum(dim=-1, keepdim=True)


def _draw(probs: Tensor, u: float) -> int:
    cum = probs.cumsum(dim=-1)
    idx = int((cum < u * float(cum[-1])).sum())
    return min(idx, probs.shape[-1] - 1)


def reject(
    chooser: Tensor,
    params: GenParams,
    seed: int,
    start: int,
    drafts: list[int],
    q: Tensor,
    plain: list[int],
) -> list[int]:
    """The choice at each of the n = len(drafts) + 1 rows, as the verify step reads them:
    the kept drafts, then the token after them; rows past that keep `plain` (the request's
    own draws, unused). `start` is the index of the first token drawn (output length)."""
    n = len(drafts) + 1
    p = distribution(chooser[: n - 1], params) if n > 1 else chooser[:0]
    dev = chooser.device
    at = torch.arange(start, start + n - 1, device=dev)
    if n > 1:
        u = uniforms(torch.full_like(at, seed ^ ACCEPT_STREAM), at)
        d = torch.tensor(drafts, device=dev)[:, None]
        ratio = p.gather(1, d)[:, 0] / q[: n - 1].to(p).gather(1, d)[:, 0].clamp_min(1e-30)
        ok = (u < ratio).tolist()
    else:
        ok = []
    out = list(plain)
    for j, keep in enumerate(ok):
        if keep:
            out[j] = drafts[j]
            continue
        rest = (p[j] - q[j].to(p)).clamp_min(0.0)
        if float(rest.sum()) <= 0.0:  # p == q here: any draw from p is exact
            rest = p[j]
        s = torch.tensor([seed ^ RESIDUAL_STREAM], device=dev)
        v = float(uniforms(s, torch.tensor([start + j], device=dev))[0])
        out[j] = _draw(rest, v)
        return out
    return out
