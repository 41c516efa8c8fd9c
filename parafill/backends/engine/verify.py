"""Choosing tokens for every logits row of a step, and accepting drafted tokens.

A sequence that fed its last token plus k drafts has k + 1 logits rows. Row j is decided
exactly as plain decoding would decide the token at that position had drafts 1..j been
accepted: penalties count the output plus drafts before j, and a sampled row draws with the
uniform of (seed, token index), so a seeded request gives the same tokens with or without
drafts, whatever shares its step. The drafts kept are the longest prefix equal to those
choices, plus the choice after them. For a draft that is one fixed token (n-gram, Jacobi) this
is exact rejection sampling: the draft is kept with probability p(draft), and a rejection
leaves p with the draft removed.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from parafill.backends.engine.sampling import (
    Top,
    adjust,
    chosen_logprobs,
    pick,
    top_logprobs,
)
from parafill.backends.engine.schedule import Seq


@dataclass(frozen=True)
class Window:
    """What one step decided for one sequence."""

    seq: Seq
    predicted: list[int]  # the choice at each of its logits rows
    accepted: int  # drafts kept; the tokens to emit are predicted[: accepted + 1]
    logprobs: list[float]
    tops: list[Top]


def decide(logits: Tensor, sampled: list[tuple[Seq, int]]) -> list[Window]:
    """logits (M, V), rows in `sampled` order; one batched choice over every row."""
    if not sampled:
        return []
    params, gens, seeds, draws = [], [], [], []
    for seq, n in sampled:
        drafts = seq.draft[: n - 1]
        for j in range(n):
            params.append(seq.params)
            gens.append(seq.generated + drafts[:j] if j else seq.generated)
            seeds.append(seq.seed)
            draws.append(len(seq.generated) + j)
    tokens = pick(adjust(logits, params, gens), params, seeds, draws)
    logps = chosen_logprobs(logits, tokens)
    tops = top_logprobs(logits, [p.top_logprobs for p in params])
    out, at = [], 0
    for seq, n in sampled:
        pred = tokens[at : at + n]
        a = 0
        while a < n - 1 and seq.draft[a] == pred[a]:
            a += 1
        out.append(Window(seq, pred, a, logps[at : at + n], tops[at : at + n]))
        at += n
    return out
