"""Sequence state and the assembly of one forward's inputs from the active sequences.

Decode tokens go first (each sequence's last token plus its drafted tokens, if any), then
prompt chunks up to the step's prefill budget. The attention mask is each sequence's visible
columns plus causal visibility of its own new tokens, drafts included (a draft sees the
sequence and the drafts before it, never another sequence's); it is the same code for batch
rows (one sequence per row) and tree packing (all in one row).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from parafill.backends.engine.model import StepInput
from parafill.backends.engine.sampling import GenParams
from parafill.fillers.base import Proposer


@dataclass(eq=False)
class Seq:
    id: int
    prompt: list[int]
    params: GenParams
    seed: int  # the draws' seed (sampled requests; see sampling.uniforms)
    prefix_only: bool = False  # holds a shared prefix for siblings; never samples
    generated: list[int] = field(default_factory=list)
    row: int = -1
    slot: int = -1
    cols: list[int] = field(default_factory=list)  # KV column of each position
    max_col: int = 0
    fed: int = 0  # positions whose KV is written
    proposer: Proposer | None = None  # drafts tokens to verify (None: one token per step)
    draft: list[int] = field(default_factory=list)  # this step's drafts, after the last token
    k: int = 4  # current draft length (adapted to acceptance)
    rate: float = 0.6  # running acceptance rate of its drafts
    passes: int = 0  # forward passes that fed this sequence
    drafted: int = 0
    accepted: int = 0

    @property
    def known(self) -> int:
        # the last sampled token is known but not yet fed
        return len(self.prompt) + len(self.generated)

    @property
    def done_feeding(self) -> bool:
        return self.fed >= self.known

    def token(self, pos: int) -> int:
        n, g = len(self.prompt), len(self.generated)
        if pos < n:
            return self.prompt[pos]
        return self.generated[pos - n] if pos < n + g else self.draft[pos - n - g]


@dataclass
class StepPlan:
    written: list[tuple[Seq, list[int]]]  # columns each sequence writes this step
    sampled: list[tuple[Seq, int]]  # sequences choosing tokens, in logits order, and how
    # many logits rows each has (1 + its drafts)


def longest_match(
    tokens: list[int], seqs: Sequence[Seq], written_only: bool = False
) -> tuple[Seq | None, int]:
    """The sequence sharing the longest token prefix with `tokens` (KV-written part only)."""
    best: Seq | None = None
    best_len = 0
    for s in seqs:
        limit = s.fed if written_only else s.known
        n = len(os.path.commonprefix([tokens, (s.prompt + s.generated)[:limit]]))
        if n > best_len:
            best, best_len = s, n
    return best, best_len


def build_step(
    work: list[Seq], vis: Tensor, prefill_chunk: int, device: torch.device
) -> tuple[StepInput, StepPlan]:
    decode = [s for s in work if s.known - s.fed == 1]
    prefill = [s for s in work if s.known - s.fed > 1]
    feeds: list[tuple[Seq, int]] = [(s, 1 + len(s.draft)) for s in decode]
    budget = prefill_chunk
    for s in prefill:
        if budget <= 0:
            break
        n = min(s.known - s.fed, budget)
        feeds.append((s, n))
        budget -= n
    return _tensors(feeds, vis, device)


def _tensors(
    feeds: list[tuple[Seq, int]], vis: Tensor, device: torch.device
) -> tuple[StepInput, StepPlan]:
    tokens, pos, rows, cols, qslots, owner, order = [], [], [], [], [], [], []
    per_row: dict[int, int] = {}
    written, sampled = [], []
    logits_at: list[int] = []
    for i, (s, n) in enumerate(feeds):
        span = range(s.fed, s.fed + n)
        new_cols = [s.cols[p] for p in span]
        tokens += [s.token(p) for p in span]
        pos += list(span)
        rows += [s.row] * n
        cols += new_cols
        start = per_row.get(s.row, 0)
        qslots += list(range(start, start + n))
        per_row[s.row] = start + n
        owner += [i] * n
        order += list(range(n))
        written.append((s, new_cols))
        if s.fed + n >= s.known and not s.prefix_only:
            rows_out = s.fed + n - s.known + 1  # the last known token and each draft
            sampled.append((s, rows_out))
            logits_at += range(len(tokens) - rows_out, len(tokens))
    r = max(rows) + 1
    q = max(per_row.values())
    length = max(s.max_col for s, _ in feeds) + 1
    mask = _mask(feeds, vis, owner, order, cols, (r, q, length), rows, qslots)

    def t(xs: list[int]) -> Tensor:
        return torch.tensor(xs, dtype=torch.long, device=device)

    step = StepInput(t(tokens), t(pos), t(rows), t(cols), t(qslots), mask, t(logits_at))
    return step, StepPlan(written, sampled)


def _mask(
    feeds: list[tuple[Seq, int]],
    vis: Tensor,
    owner: list[int],
    order: list[int],
    cols: list[int],
    shape: tuple[int, int, int],
    rows: list[int],
    qslots: list[int],
) -> Tensor:
    r, q, length = shape
    dev = vis.device
    slots = torch.tensor([feeds[o][0].slot for o in owner], device=dev)
    own = torch.tensor(owner, device=dev)
    ordv = torch.tensor(order, device=dev)
    # query i sees new token k iff same sequence and k is not after i: (N, N)
    pair = (own[:, None] == own[None, :]) & (ordv[None, :] <= ordv[:, None])
    colv = torch.tensor(cols, device=dev).expand(len(cols), -1)
    causal = torch.zeros(len(cols), length, dtype=torch.int32, device=dev)
    causal.scatter_add_(1, colv, pair.to(torch.int32))
    per_query = vis[slots, :length] | (causal > 0)  # (N, L)
    mask = torch.zeros(r, q, length, dtype=torch.bool, device=dev)
    mask[:, :, 0] = True  # padded queries attend somewhere harmless (avoids NaN rows)
    mask[torch.tensor(rows, device=dev), torch.tensor(qslots, device=dev)] = per_query
    return mask[:, None]  # (R, 1, Q, L)
