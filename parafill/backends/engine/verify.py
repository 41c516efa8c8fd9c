"""Choosing tokens for every logits row of a step, and accepting drafted tokens.

A sequence that fed its last token plus k drafts has k + 1 logits rows. Row j is decided
exactly as plain decoding would decide the token at that position had drafts 1..j been
accepted: penalties count the output plus drafts before j, and a sampled row draws with the
uniform of (seed, token index), so a seeded request gives the same tokens with or without
drafts, whatever shares its step. The drafts kept are the longest prefix equal to those
choices, plus the choice after them; in a tree of drafts, the path from the last token that
follows, at every node, the child equal to that node's choice (the choice is what plain
decoding would emit there, so any number of candidates per node stays exact). For a draft
that is one fixed token (n-gram, Jacobi) this
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
from parafill.backends.engine.schedule import Seq, lineage


@dataclass(frozen=True)
class Window:
    """What one step decided for one sequence."""

    seq: Seq
    predicted: list[int]  # the choice at each of its logits rows: after the last token, then
    # after each draft
    path: list[int]  # the drafts kept, in order (indices into seq.draft)
    logprobs: list[float]  # per logits row
    tops: list[Top]

    @property
    def accepted(self) -> int:
        return len(self.path)

    @property
    def rows(self) -> list[int]:
        """The logits rows whose choices are emitted: the kept drafts and the one after."""
        return [0] + [1 + j for j in self.path]


def decide(logits: Tensor, sampled: list[tuple[Seq, int]]) -> list[Window]:
    """logits (M, V), rows in `sampled` order; one batched choice over every row."""
    if not sampled:
        return []
    params, gens, seeds, draws, prompts = [], [], [], [], []
    for seq, n in sampled:
        drafts = seq.draft[: n - 1]
        lines = lineage(seq.parents[: n - 1])
        for j in range(n):
            before = [drafts[a] for a in lines[j - 1]] if j else []
            params.append(seq.params)
            gens.append(seq.generated + before if j else seq.generated)
            seeds.append(seq.seed)
            draws.append(len(seq.generated) + len(before))
            prompts.append(seq.prompt)
    tokens = pick(adjust(logits, params, gens, prompts), params, seeds, draws)
    logps = chosen_logprobs(logits, tokens)
    tops = top_logprobs(logits, [p.top_logprobs for p in params])
    out, at = [], 0
    for seq, n in sampled:
        pred = tokens[at : at + n]
        out.append(Window(seq, pred, _walk(seq, pred), logps[at : at + n], tops[at : at + n]))
        at += n
    return out


def _walk(seq: Seq, pred: list[int]) -> list[int]:
    """From the last token, step to the child draft equal to the current choice."""
    children: dict[int, list[int]] = {}
    for j, p in enumerate(seq.parents[: len(pred) - 1]):
        children.setdefault(p, []).append(j)
    path: list[int] = []
    node = -1
    while True:
        want = pred[node + 1]
        node = next((c for c in children.get(node, []) if seq.draft[c] == want), -2)
        if node == -2:
            return path
        path.append(node)
