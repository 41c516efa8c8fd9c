"""Which masked positions of the current block to reveal this step (greedy, per row, batched).

Threshold rule (Fast-dLLM): every masked position whose top probability is >= tau is revealed,
and always at least the single most confident one; tau = 1 means exactly that one (LLaDA's
low-confidence remasking with one token per step). Factor rule (Fast-dLLM): sort the masked
positions by confidence c_1 >= c_2 >= ...; reveal the longest run of them with
c_n >= 1 - factor / (n + 1), at least one. No Python loop over rows.
"""

from __future__ import annotations

import torch
from torch import Tensor


def choose(
    logits: Tensor, masked: Tensor, threshold: float, factor: float | None
) -> tuple[Tensor, Tensor]:
    """logits (R, b, V), masked (R, b) -> (argmax tokens (R, b), reveal (R, b) bool)."""
    conf, pred = confidence(logits)
    return pred, select(conf, masked, threshold, factor)


def confidence(logits: Tensor) -> tuple[Tensor, Tensor]:
    """(top probability, argmax) over the last axis; float64 as Fast-dLLM computes it."""
    conf, pred = torch.softmax(logits.double(), -1).max(-1)
    return conf, pred


def select(conf: Tensor, masked: Tensor, threshold: float, factor: float | None) -> Tensor:
    """conf (R, b) top probabilities, masked (R, b) -> the positions to reveal (R, b)."""
    conf = torch.where(masked, conf, float("-inf"))
    if factor is not None:
        reveal = _factor(conf, factor)
    elif threshold < 1.0:
        reveal = conf >= threshold
    else:
        reveal = torch.zeros_like(masked)
    best = conf.argmax(-1, keepdim=True)  # first index among equals
    reveal = reveal.scatter(1, best, True)
    out: Tensor = reveal & masked
    return out


def _factor(conf: Tensor, factor: float) -> Tensor:
    ranked, order = conf.sort(dim=-1, descending=True, stable=True)  # (R, b)
    n = torch.arange(1, conf.shape[-1] + 1, device=conf.device, dtype=conf.dtype)
    bar = 1.0 - factor / (n + 1.0)
    bar[0] = float("-inf")  # the most confident is always revealed
    count = (ranked >= bar).long().cumprod(-1).sum(-1, keepdim=True)  # (R, 1)
    slots = torch.arange(conf.shape[-1], device=conf.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, slots)  # each position's place in line
    reveal: Tensor = rank < count
    return reveal
