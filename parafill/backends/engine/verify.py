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
leaves p with the draft removed. A draft a model sampled from its distribution q is kept
with min(1, p / q) instead (reject.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from parafill.backends.engine.params import repeats
from parafill.backends.engine.reject import reject
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
    error: str | None = None  # its constraint allows no token: the sequence cannot go on

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
    chooser = adjust(logits, params, gens, prompts)
    dead: set[int] = set()
    if any(seq.matcher is not None for seq, _ in sampled):
        chooser, dead = _constrain(logits, chooser, sampled)
    tokens = pick(chooser, params, seeds, draws)
    at = 0
    for seq, n in sampled:  # a model's sampled draft: kept by rejection sampling against q
        if seq.draft_q is not None and n > 1 and seq.params.temperature > 0:
            start, drafts = len(seq.generated), seq.draft[: n - 1]
            rows = chooser[at : at + n]
            tokens[at : at + n] = reject(
                rows, seq.params, seq.seed, start, drafts, seq.draft_q, tokens[at : at + n]
            )
        at += n
    paths, at = [], 0
    for seq, n in sampled:
        pred = tokens[at : at + n]
        lenient = _lenient(seq, chooser[at : at + n]) if seq.params.lexical and n > 1 else None
        paths.append([] if id(seq) in dead else _walk(seq, pred, lenient))
        tokens[at : at + n] = pred  # a leniently kept draft replaces the choice it differs from
        at += n
    logps = chosen_logprobs(logits, tokens)
    tops = top_logprobs(logits, [p.top_logprobs for p in params])
    out, at = [], 0
    for (seq, n), path in zip(sampled, paths, strict=True):
        why = _NO_TOKEN if id(seq) in dead else None
        w = Window(seq, tokens[at : at + n], path, logps[at : at + n], tops[at : at + n], why)
        out.append(w)
        at += n
    return out


def _lenient(seq: Seq, rows: Tensor) -> Callable[[int, int], bool]:
    """Lexical acceptance (lossy): whether the model gives the draft `token` at logits row `row`
    at least `params.lexical` (the rows' choice distribution: penalties and the output
    constraint applied, so a token they rule out is never kept)."""
    probs = torch.softmax(rows.float(), dim=-1)
    drafts = torch.tensor(seq.draft[: len(rows) - 1], device=rows.device)
    # p(draft j) at each row that could have drafted it: row parent(j) + 1, read in one go
    parent_rows = torch.tensor([p + 1 for p in seq.parents[: len(rows) - 1]], device=rows.device)
    ok = (probs[parent_rows, drafts] >= seq.params.lexical).tolist()
    return lambda row, j: bool(ok[j])


_NO_TOKEN = "the output constraint allows no token here (the grammar cannot continue)"


def _constrain(
    logits: Tensor, chooser: Tensor, sampled: list[tuple[Seq, int]]
) -> tuple[Tensor, set[int]]:
    """Mask every constrained sequence's rows: row j gets what its constraint allows after
    the drafts before it (one batched fill; the matchers do not move; drafts the constraint
    refuses end the chain). Returns the masked choice logits and the sequences (ids) whose
    constraint allows nothing at all."""
    from parafill.constraints import allocate_bitmask, apply_bitmask, fill_batch, fill_batch_drafts

    items, starts, at = [], [], 0
    rows: list[int] = []
    for seq, n in sampled:
        if seq.matcher is not None:
            items.append((seq.matcher, len(rows), seq.draft[: n - 1]))
            starts.append((seq, len(rows)))
            rows += range(at, at + n)
        at += n
    mask = allocate_bitmask(len(rows), chooser.shape[-1])
    fill_batch_drafts([i for i in items if i[2]], mask)
    plain = [(m, r) for m, r, d in items if not d]
    fill_batch([m for m, _ in plain], mask, [r for _, r in plain])
    # one host read for every sequence's first row (not one per row)
    some = mask[[r for _, r in starts]].ne(0).any(dim=1).tolist()
    dead = {
        id(seq)
        for (seq, _), ok in zip(starts, some, strict=True)
        if not ok or (seq.matcher and seq.matcher.error())
    }
    if len(rows) == len(chooser):  # every row constrained: mask one copy in place
        out = chooser.float().clone() if chooser is logits else chooser.float()
        apply_bitmask(out, mask)
        return out, dead
    idx = torch.tensor(rows, device=chooser.device)
    sub = chooser[idx].float()  # a copy: `logits` (the model's own) stays for log-probs
    apply_bitmask(sub, mask)
    out = chooser.float().clone() if chooser is logits else chooser
    out[idx] = sub
    return out, dead


class DeadEnd(Exception):
    """A sequence's output constraint refused the token chosen for it: that sequence cannot go
    on (a schema no finite output satisfies, or a grammar library whose mask and acceptance
    disagree). It ends that request only, never its step-mates'."""


def settle(w: Window) -> tuple[int, str | None]:
    """Append a window's chosen tokens to its sequence, as plain decoding would one by one:
    an EOS stops it (not emitted), then the loop guard, the constraint reaching its end, and
    max_tokens. Returns how many tokens are emitted and the finish reason (None: go on).
    Raises DeadEnd when the sequence's constraint refuses a chosen token."""
    seq, p = w.seq, w.seq.params
    n, finish = 0, None
    for tok in [w.predicted[r] for r in w.rows]:
        seq.generated.append(tok)
        if tok in p.eos_ids:
            return n, "stop"
        n += 1
        if seq.matcher is not None and not seq.matcher.accept(tok):
            why = (seq.matcher.error() or f"token {tok} is refused").splitlines()[0]
            raise DeadEnd(f"the output constraint cannot continue: {why}")
        if repeats(seq.generated, p.stop_on_repeat, seq.seen):
            return n, "stop"  # looping: the guard ends it like a stop string would
        if seq.matcher is not None and seq.matcher.is_terminated():
            return n, "stop"  # the constrained output is complete: only its end may follow
        if len(seq.generated) >= p.max_tokens:
            return n, "length"
    return n, finish


def _walk(
    seq: Seq, pred: list[int], lenient: Callable[[int, int], bool] | None = None
) -> list[int]:
    """From the last token, step to the child draft equal to the current choice; with
    `lenient` (lexical acceptance), where no child equals it, to the first child it keeps,
    whose token then replaces the choice in `pred`."""
    children: dict[int, list[int]] = {}
    for j, p in enumerate(seq.parents[: len(pred) - 1]):
        children.setdefault(p, []).append(j)
    path: list[int] = []
    node = -1
    while True:
        row, kids = node + 1, children.get(node, [])
        want = pred[row]
        node = next((c for c in kids if seq.draft[c] == want), -2)
        if node == -2 and lenient is not None:
            node = next((c for c in kids if lenient(row, c)), -2)
            if node != -2:
                pred[row] = seq.draft[node]
        if node == -2:
            return path
        path.append(node)
