"""Sequence state and the assembly of one forward's inputs from the active sequences.

Decode tokens go first, then prompt chunks up to the step's prefill budget. The attention
mask is each sequence's visible columns plus causal visibility of its own new tokens; it is
the same code for batch rows (one sequence per row) and tree packing (all in one row).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from parafill.backends.engine.model import StepInput
from parafill.backends.engine.sampling import GenParams


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

    @property
    def known(self) -> int:
        # the last sampled token is known but not yet fed
        return len(self.prompt) + len(self.generated)

    @property
    def done_feeding(self) -> bool:
        return self.fed >= self.known

    def token(self, pos: int) -> int:
        n = len(self.prompt)
        return self.prompt[pos] if pos < n else self.generated[pos - n]


@dataclass
class StepPlan:
    written: list[tuple[Seq, list[int]]]  # columns each sequence writes this step
    sampled: list[Seq]  # sequences whose next token is sampled, in logits order


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
    feeds: list[tuple[Seq, int]] = [(s, 1) for s in decode]
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
    written, sampled, logits_at = [], [], []
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
        if s.fed + n == s.known and not s.prefix_only:
            sampled.append(s)
            logits_at.append(len(tokens) - 1)
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
