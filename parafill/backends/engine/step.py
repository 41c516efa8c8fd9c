"""The tensors of one forward, from a step plan's feeds (chosen by `schedule`, schedule.py);
it builds inputs only, the model runner (runner.py) runs them.

The attention mask is each sequence's visible columns plus causal visibility of its own new
tokens, drafts included (a draft sees the sequence and its ancestor drafts — the drafts
before it in a chain — never another sequence's); it is the same code for batch rows (one
sequence per row) and tree packing (all in one row).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from parafill.backends.engine.model import Keys, StepInput
from parafill.backends.engine.schedule import Seq, lineage, reach


@dataclass(frozen=True)
class Layout:
    written: list[tuple[Seq, list[int]]]  # columns each sequence writes this step
    sampled: list[tuple[Seq, int]]  # sequences choosing tokens, in logits order, and how
    # many logits rows each has (1 + its drafts)
    shape: tuple[int, int, int]  # (rows, queries per row, key width): the step's cost shape


def build_step(
    feeds: list[tuple[Seq, int]], vis: Tensor, device: torch.device, ordered: bool = False
) -> tuple[StepInput, Layout]:
    """`ordered`: each query's key list (model.Keys) instead of the attention mask."""
    tokens: list[int] = []
    pos, rows, cols, qslots, owner, order = [], [], [], [], [], []
    per_row: dict[int, int] = {}
    written, sampled = [], []
    logits_at: list[int] = []
    trees: list[tuple[int, Tensor]] = []  # (first new token, its feed's ancestor matrix)
    for i, (s, n) in enumerate(feeds):
        toks, at, new_cols, tree = _feed(s, n)
        if tree is not None:
            trees.append((len(tokens), tree))
        tokens += toks
        pos += at
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
    row0 = min(rows)  # attention runs over the rows row0.. only (the rows below: no queries)
    spans, index = _spans(per_row)
    r = len(per_row) if spans else max(rows) + 1 - row0
    q = max(per_row.values())
    length = max(_extent(s, n) for s, n in feeds) + 1
    layout = Layout(written, sampled, (r, q, length))

    def t(xs: list[int]) -> Tensor:
        return torch.tensor(xs, dtype=torch.long, device=device)

    if ordered:
        keys = _keys(feeds, rows, cols)
        step = StepInput(
            t(tokens), t(pos), t(rows), t(cols), t(qslots), None, t(logits_at), keys=keys
        )
        return step, layout
    pair = _pairs(owner, order, trees, vis.device)
    rel = [index[x] for x in rows] if spans else [x - row0 for x in rows]
    mask = _mask(feeds, vis, owner, pair, cols, (r, q, length), rel, qslots)
    mask, keep = _compact(mask)

    dense = len(tokens) == r * q and all(
        a == b // q and c == b % q for b, (a, c) in enumerate(zip(rel, qslots, strict=True))
    )  # token b is query b % q of mask row b // q: no query scatter / gather
    one_run = len(per_row) == 1 and cols == list(range(cols[0], cols[0] + len(cols)))
    step = StepInput(
        t(tokens), t(pos), t(rows), t(cols), t(qslots), mask, t(logits_at), dense=dense,
        row0=row0, keep=keep, spans=spans, mrows=t(rel) if spans else None,
        write=(rows[0], cols[0]) if one_run else None,
    )  # fmt: skip
    return step, layout


def _keys(feeds: list[tuple[Seq, int]], rows: list[int], cols: list[int]) -> Keys:
    """Per new token, the columns it attends to in position order: its sequence's columns up
    to and including its own; a draft, the last token's and its ancestor drafts' and its own.
    A sequence's own columns are one int32 array made once (`s.cols` is fixed at placement)."""
    ptrs: list[int] = []
    lens: list[int] = []
    hold: list[Tensor] = []
    for s, n in feeds:
        base = _cols_array(s)
        if not s.draft:
            ptrs += [base.data_ptr()] * n
            lens += range(s.fed + 1, s.fed + n + 1)
            continue
        head = s.cols[: s.fed + 1]
        ptrs.append(base.data_ptr())
        lens.append(s.fed + 1)
        for line in lineage(s.parents):
            arr = torch.tensor(head + [s.draft_cols[j] for j in line], dtype=torch.int32)
            hold.append(arr)
            ptrs.append(arr.data_ptr())
            lens.append(len(arr))
    return Keys(
        torch.tensor(rows, dtype=torch.int32),
        torch.tensor(cols, dtype=torch.int32),
        torch.tensor(ptrs, dtype=torch.int64),
        torch.tensor(lens, dtype=torch.int32),
        tuple(hold),
    )


def _cols_array(s: Seq) -> Tensor:
    got = s.cols_arr
    if got is None or got[0] is not s.cols:
        got = s.cols_arr = (s.cols, torch.tensor(s.cols, dtype=torch.int32))
    arr: Tensor = got[1]
    return arr


def _spans(per_row: dict[int, int]) -> tuple[tuple[tuple[int, int], ...] | None, dict[int, int]]:
    """Rows mode: the runs of consecutive KV rows with queries, and each such row's index
    among them, where the rows without queries between them outnumber the extra runs (each
    run is one more attention call per layer; each row skipped, one KV row not read: rows of
    finished requests kept as prefix cache sit between the live ones). None: one run."""
    used = sorted(per_row)
    runs: list[list[int]] = []
    for x in used:
        if runs and runs[-1][0] + runs[-1][1] == x:
            runs[-1][1] += 1
        else:
            runs.append([x, 1])
    gaps = used[-1] + 1 - used[0] - len(used)
    if len(runs) < 2 or gaps < len(runs) - 1:
        return None, {}
    return tuple((a, n) for a, n in runs), {x: i for i, x in enumerate(used)}


def _extent(s: Seq, n: int) -> int:
    """The highest column a feed's queries may see: its written and new positions' columns,
    and its drafts' (borrowed side-branch columns too)."""
    upto = s.fed + (1 if s.draft else n)
    return max([reach(s, upto), *s.draft_cols])


def _compact(mask: Tensor) -> tuple[Tensor, Tensor | None]:
    """One row whose columns are mostly unseen by the step's queries (tree mode: prefix-cache
    entries and other requests' KV spread over the row): the mask over the seen columns only,
    and which they are, so attention reads those instead of the row's whole width."""
    if mask.shape[0] != 1:
        return mask, None
    seen = mask[0, 0].any(dim=0)  # (L,)
    if int(seen.sum()) * 2 > seen.numel():
        return mask, None
    keep = seen.nonzero().flatten()
    return mask.index_select(3, keep), keep


def _feed(s: Seq, n: int) -> tuple[list[int], list[int], list[int], Tensor | None]:
    """A feed's tokens, positions and columns, and for a tree of drafts which of its new
    tokens each one sees (None: each sees those before it)."""
    if not s.draft:
        span = range(s.fed, s.fed + n)
        return [s.token(p) for p in span], list(span), [s.cols[p] for p in span], None
    lines = lineage(s.parents)
    at = [s.fed] + [s.fed + len(line) for line in lines]
    toks = [s.token(s.fed)] + s.draft
    cols = [s.cols[s.fed]] + s.draft_cols
    if all(p == j - 1 for j, p in enumerate(s.parents)):
        return toks, at, cols, None
    sees = torch.zeros(n, n, dtype=torch.bool)
    sees[:, 0] = True
    for j, line in enumerate(lines):
        sees[j + 1, [a + 1 for a in line]] = True
    return toks, at, cols, sees


def _pairs(
    owner: list[int], order: list[int], trees: list[tuple[int, Tensor]], dev: torch.device
) -> Tensor:
    """(N, N): query i sees new token k iff same sequence and k is not after i, or for a
    tree of drafts, k is i or one of its ancestors."""
    own = torch.tensor(owner, device=dev)
    ordv = torch.tensor(order, device=dev)
    pair = (own[:, None] == own[None, :]) & (ordv[None, :] <= ordv[:, None])
    for at, sees in trees:
        n = len(sees)
        pair[at : at + n, at : at + n] = sees.to(dev)
    return pair


def _mask(
    feeds: list[tuple[Seq, int]],
    vis: Tensor,
    owner: list[int],
    pair: Tensor,
    cols: list[int],
    shape: tuple[int, int, int],
    rows: list[int],
    qslots: list[int],
) -> Tensor:
    """(R, 1, Q, L) for `shape` (R, Q, L); `rows`: each new token's row of the mask."""
    r, q, length = shape
    dev = vis.device
    slots = torch.tensor([feeds[o][0].slot for o in owner], device=dev)
    colv = torch.tensor(cols, device=dev).expand(len(cols), -1)
    causal = torch.zeros(len(cols), length, dtype=torch.int32, device=dev)
    causal.scatter_add_(1, colv, pair.to(torch.int32))
    per_query = vis[slots, :length] | (causal > 0)  # (N, L)
    mask = torch.zeros(r, q, length, dtype=torch.bool, device=dev)
    mask[:, :, 0] = True  # padded queries attend somewhere harmless (avoids NaN rows)
    mask[torch.tensor(rows, device=dev), torch.tensor(qslots, device=dev)] = per_query
    return mask[:, None]  # (R, 1, Q, L)


__all__ = ["Layout", "build_step"]
