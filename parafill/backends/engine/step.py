"""The tensors of one forward, from the feeds `schedule` chose (see schedule.py).

The attention mask is each sequence's visible
columns plus causal visibility of its own new tokens, drafts included (a draft sees the
sequence and the drafts before it, never another sequence's); it is the same code for batch
rows (one sequence per row) and tree packing (all in one row).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from parafill.backends.engine.model import StepInput
from parafill.backends.engine.schedule import Seq, longest_match, schedule


@dataclass
class StepPlan:
    written: list[tuple[Seq, list[int]]]  # columns each sequence writes this step
    sampled: list[tuple[Seq, int]]  # sequences choosing tokens, in logits order, and how
    # many logits rows each has (1 + its drafts)


def build_step(
    work: list[Seq], vis: Tensor, prefill_chunk: int, device: torch.device
) -> tuple[StepInput, StepPlan]:
    return _tensors(schedule(work, prefill_chunk), vis, device)


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


__all__ = ["Seq", "StepPlan", "build_step", "longest_match"]
