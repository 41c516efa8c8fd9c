"""Per-request sampling parameters and next-token selection (greedy, temperature, top-p, seed).

Greedy rows are decided with one argmax over the whole step; sampled rows use their own
seeded generator, so a seeded request draws the same tokens whatever else shares its step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class GenParams:
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    eos_ids: frozenset[int] = frozenset()


def make_generator(params: GenParams) -> torch.Generator | None:
    if params.temperature <= 0:
        return None
    gen = torch.Generator()
    if params.seed is not None:
        gen.manual_seed(params.seed)
    else:
        gen.seed()
    return gen


def pick(logits: Tensor, params: list[GenParams], gens: list[torch.Generator | None]) -> list[int]:
    """logits (M, V) float; returns one token id per row."""
    greedy = logits.argmax(dim=-1).tolist()
    for i, (p, gen) in enumerate(zip(params, gens, strict=True)):
        if gen is not None:
            greedy[i] = sample_one(logits[i].cpu(), p, gen)
    return [int(t) for t in greedy]


def chosen_logprobs(logits: Tensor, tokens: list[int]) -> list[float]:
    """log p(token) under the model's own distribution (before temperature / top-p), per row."""
    idx = torch.tensor(tokens, device=logits.device)[:, None]
    logp = logits.float().gather(1, idx)[:, 0] - torch.logsumexp(logits.float(), dim=-1)
    return [float(x) for x in logp.tolist()]


def sample_one(logits: Tensor, p: GenParams, gen: torch.Generator) -> int:
    probs = torch.softmax(logits / p.temperature, dim=-1)
    if p.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(0) - sorted_p < p.top_p  # always keeps the top token
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs, 1, generator=gen))
