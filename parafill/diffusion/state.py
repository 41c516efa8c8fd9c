"""The decoding state of a batch of rows: layout, per-step queries and masks, reveal, retire.

A logical row (one request, or one branch of a packed group) holds its tokens by position:
prompt, then a canvas of mask tokens decoded block by block. A physical row is one sequence
of the KV cache: an unpacked request has its own; the branches of a packed group share one,
holding the shared prefix's columns once and then each branch's own columns. Every key column
carries (position, segment): a query sees segment 0 (the shared prefix) and its own segment,
within the model's rule (block-causal or bidirectional). Rows advance independently, so a row
can join (admit) or leave (retire) between any two forwards. All per-row math is vectorized.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from parafill.diffusion.loader import Spec
from parafill.diffusion.model import KV, Queries
from parafill.diffusion.unmask import confidence, select

CACHE_MODES = ("none", "prefix", "dual")
_LOGICAL = ("x", "masked", "plen", "limit", "hi", "bs", "committed", "floor", "shared")
_LOGICAL_MORE = ("shift", "seg", "grp", "fresh", "forwards", "decoded")


@dataclass(frozen=True)
class Request:
    """One row to decode. `shared` leading prompt tokens are shared with the other requests
    of its group (0: not packed); a multiple of the block, so no block straddles it."""

    index: int
    prompt: tuple[int, ...]
    limit: int
    shared: int = 0


@dataclass(frozen=True)
class Rules:
    """How the batch decodes: model kind, block size, cache mode and reveal rule."""

    block: int
    block_causal: bool
    token_shift: bool
    mask_id: int
    cache: str
    eos: tuple[int, ...]
    threshold: float
    factor: float | None


@dataclass(frozen=True)
class Finished:
    index: int
    tokens: tuple[int, ...]
    finish: str  # "eos" or "length"
    forwards: int
    decoded: int


def canvas(rules: Rules, length: int, limit: int) -> tuple[int, int]:
    """(start of the first block, end of the canvas) for a prompt of `length` tokens. Block
    diffusion blocks are aligned to absolute positions, as the model was trained (the first
    one may hold the prompt's tail); LLaDA's blocks start where the prompt ends."""
    b = rules.block
    if rules.block_causal:
        return length // b * b, -(-(length + limit) // b) * b
    return length, length + -(-limit // b) * b


def group_width(rules: Rules, group: list[Request]) -> int:
    shared = group[0].shared
    return shared + sum(canvas(rules, len(r.prompt), r.limit)[1] - shared for r in group)


class Batch:
    """Rows in flight. Logical tensors are (L, ...), physical ones (G, ...)."""

    def __init__(self, spec: Spec, rules: Rules, widths: tuple[int, int], like: Tensor) -> None:
        self.spec, self.rules, self.like = spec, rules, like
        self.width, self.pwidth = widths[0], widths[1] + 1  # + one scratch column
        dev = like.device
        long = torch.zeros(0, dtype=torch.long, device=dev)
        # per logical row: prompt length, token budget, canvas end, current block start,
        # keys exact before this column, first column it queries, shared prefix length,
        # column offset of its own segment, its segment, its physical row, counters
        self.plen, self.limit, self.hi, self.bs = long, long.clone(), long.clone(), long.clone()
        self.committed, self.floor, self.shared = long.clone(), long.clone(), long.clone()
        self.shift, self.seg, self.grp = long.clone(), long.clone(), long.clone()
        self.forwards, self.decoded = long.clone(), long.clone()
        self.fresh = long.bool()  # the row's next step is its block's first (a refresh)
        self.x = long.new_zeros(0, self.width)
        self.masked = self.x.bool()
        self.kpos = long.new_zeros(0, self.pwidth)
        self.kseg, self.kvalid = self.kpos.clone(), self.kpos.bool()
        self.kv = KV.empty(spec, 0, self.pwidth, like)
        self.index: list[int] = []
        self._asked: tuple[Tensor, ...] = (long, long)  # masked block positions asked for
        self.eos = torch.tensor(rules.eos, dtype=torch.long, device=dev)

    @property
    def rows(self) -> int:
        return len(self.index)

    @property
    def groups(self) -> int:
        return int(self.kpos.shape[0])

    def admit(self, group: list[Request]) -> None:
        """Add a group of requests as one new physical row (each request a logical row)."""
        shared, g, dev = group[0].shared, self.groups, self.like.device
        kpos = torch.zeros(self.pwidth, dtype=torch.long, device=dev)
        kseg, kvalid = kpos.clone(), kpos.bool()
        kpos[:shared], kvalid[:shared] = torch.arange(shared), True
        off = shared
        for j, req in enumerate(group):
            bs, hi = canvas(self.rules, len(req.prompt), req.limit)
            kpos[off : off + hi - shared] = torch.arange(shared, hi)
            kseg[off : off + hi - shared], kvalid[off : off + hi - shared] = j + 1, True
            floor = 0 if j == 0 else shared  # the prefix is computed once, by branch 0
            self._append_row(req, (bs, hi, floor, off - shared, j + 1, g))
            off += hi - shared
        self.kpos = torch.cat([self.kpos, kpos[None]])
        self.kseg = torch.cat([self.kseg, kseg[None]])
        self.kvalid = torch.cat([self.kvalid, kvalid[None]])
        self.kv = self.kv.extend(KV.empty(self.spec, 1, self.pwidth, self.like))

    def widen(self, widths: tuple[int, int]) -> None:
        """Make room for rows up to (logical, packed) widths (an admission that needs more
        columns than the batch was built for). New columns are masked-out keys and undecided
        nothing: rows in flight see no difference. The old scratch column becomes an unused,
        invalid column; the scratch column moves to the new end."""
        width, pwidth = widths[0], widths[1] + 1
        if width > self.width:
            grow = width - self.width
            self.x = torch.cat([self.x, self.x.new_full((self.rows, grow), self.rules.mask_id)], 1)
            self.masked = torch.cat([self.masked, self.masked.new_zeros(self.rows, grow)], 1)
            self.width = width
        if pwidth > self.pwidth:
            grow, g = pwidth - self.pwidth, self.groups
            self.kpos = torch.cat([self.kpos, self.kpos.new_zeros(g, grow)], 1)
            self.kseg = torch.cat([self.kseg, self.kseg.new_zeros(g, grow)], 1)
            self.kvalid = torch.cat([self.kvalid, self.kvalid.new_zeros(g, grow)], 1)
            self.kv = self.kv.widen(pwidth)
            self.pwidth = pwidth

    def _append_row(self, req: Request, where: tuple[int, int, int, int, int, int]) -> None:
        bs, hi, floor, shift, seg, g = where
        n = len(req.prompt)
        x = torch.full((1, self.width), self.rules.mask_id, dtype=torch.long)
        x[0, :n] = torch.tensor(req.prompt)
        masked = torch.zeros(1, self.width, dtype=torch.bool)
        masked[0, n:hi] = True
        values = (n, req.limit, hi, bs, floor, floor, req.shared, shift, seg, g, 0, 0)
        names = _LOGICAL[2:] + _LOGICAL_MORE[:3] + _LOGICAL_MORE[4:]
        dev = self.like.device
        for name, value in zip(names, values, strict=True):
            new = torch.tensor([value], dtype=torch.long, device=dev)
            setattr(self, name, torch.cat([getattr(self, name), new]))
        self.x = torch.cat([self.x, x.to(dev)])
        self.masked = torch.cat([self.masked, masked.to(dev)])
        self.fresh = torch.cat([self.fresh, torch.ones(1, dtype=torch.bool, device=dev)])
        self.index.append(req.index)

    def windows(self) -> tuple[Tensor, Tensor]:
        """Each row's query positions this step, [a, z). A block's first step refreshes the
        cache; later steps of the block reuse it (prefix: keys before the block; dual: also
        the keys after it). The block-diffusion model never attends later blocks, so its
        cached steps query only the block (plus the position whose logits predict its start)."""
        r = self.rules
        be = self.bs + r.block
        need = (self.bs - int(r.token_shift)).clamp(min=0)
        if r.block_causal:
            base = self.floor if r.cache == "none" else self.committed.where(self.fresh, self.bs)
            return torch.minimum(base, need), be
        if r.cache == "none":
            return self.floor, self.hi
        a = self.floor.where(self.fresh, self.bs)
        return a, (self.hi.where(self.fresh, be) if r.cache == "dual" else self.hi)

    def queries(self) -> Queries:
        """Pack every row's window into its physical row (slots after the rows of its group
        that come before it) and say where each row's block logits are read."""
        a, z = self.windows()
        n = z - a
        start = n.cumsum(0) - n
        first = torch.full((self.groups,), int(n.sum()), dtype=torch.long, device=n.device)
        first = first.scatter_reduce(0, self.grp, start, "amin")
        slot0 = start - first[self.grp]
        total = torch.zeros_like(first).scatter_add(0, self.grp, n)
        rows = torch.repeat_interleave(torch.arange(self.rows, device=n.device), n)  # (N,)
        t = torch.arange(rows.shape[0], device=n.device) - start[rows]
        pos = a[rows] + t
        prefix = pos < self.shared[rows]
        g, slot = self.grp[rows], slot0[rows] + t
        shape = (self.groups, int(total.max()))
        tokens = torch.full(shape, self.rules.mask_id, dtype=torch.long, device=n.device)
        tokens[g, slot] = self.x[rows, pos]
        positions = torch.zeros_like(tokens)
        positions[g, slot] = pos
        cols = torch.full_like(tokens, self.pwidth - 1)  # unused slots write the scratch column
        cols[g, slot] = pos.where(prefix, pos + self.shift[rows])
        qseg = torch.full_like(tokens, -1)
        qseg[g, slot] = torch.zeros_like(pos).where(prefix, self.seg[rows])
        out = self._outputs(a, n, slot0)
        return Queries(tokens, positions, cols, self._mask(positions, qseg), *out)

    def _outputs(self, a: Tensor, n: Tensor, slot0: Tensor) -> tuple[Tensor, Tensor]:
        """(row, slot) of the logits that predict the still-masked positions of each row's
        block (the output head and softmax over the vocabulary are the costly part of a
        step on a CPU; decided positions need neither)."""
        b = self.rules.block
        idx = self.bs[:, None] + torch.arange(b, device=a.device)  # (L, b)
        self._asked = self.masked.gather(1, idx).nonzero(as_tuple=True)  # (rows, offsets)
        r, j = self._asked
        wanted = self.bs[r] + j - int(self.rules.token_shift)
        offset = torch.minimum((wanted - a[r]).clamp(min=0), n[r] - 1)
        return self.grp[r], slot0[r] + offset

    def _mask(self, positions: Tensor, qseg: Tensor) -> Tensor:
        """(G, 1, T, K) bool over the K = used key columns (the scratch column excluded)."""
        k = self.pwidth - 1
        kseg, kpos = self.kseg[:, None, :k], self.kpos[:, None, :k]
        allowed = self.kvalid[:, None, :k] & ((kseg == 0) | (kseg == qseg[..., None]))
        if self.rules.block_causal:
            b = self.rules.block
            allowed &= kpos // b <= positions[..., None] // b
        # an unused slot attends column 0 only (any finite row will do; it is never read)
        first = torch.arange(k, device=kpos.device) == 0
        return allowed.where(qseg[..., None] >= 0, first)[:, None]

    def apply(self, logits: Tensor) -> Tensor:
        """Reveal tokens from the logits of the last `queries()` (one per masked position of
        each row's block); advance finished blocks. Returns (L,) bool: rows that are done
        (their first `limit` positions decoded, or an EOS with nothing undecided before it)."""
        b = self.rules.block
        idx = self.bs[:, None] + torch.arange(b, device=self.bs.device)  # (L, b)
        was = self.masked.gather(1, idx)
        conf_m, pred_m = confidence(logits)
        conf = torch.zeros(was.shape, dtype=conf_m.dtype, device=was.device)
        pred = torch.zeros_like(idx)
        conf[self._asked], pred[self._asked] = conf_m, pred_m
        reveal = select(conf, was, *self._rule())
        self.x.scatter_(1, idx, pred.where(reveal, self.x.gather(1, idx)))
        left = was & ~reveal
        self.masked.scatter_(1, idx, left)
        self.forwards += 1
        self.decoded += reveal.sum(1)
        if self.rules.block_causal:  # the refresh made every key before the block exact
            self.committed = self.bs.where(self.fresh, self.committed)
        self.fresh = ~left.any(1)
        self.bs = self.bs + b * self.fresh
        return self._done()

    def _rule(self) -> tuple[float, float | None]:
        return self.rules.threshold, self.rules.factor

    def _done(self) -> Tensor:
        col = torch.arange(self.width, device=self.x.device)
        gen = (col >= self.plen[:, None]) & (col < (self.plen + self.limit)[:, None])
        pending = self.masked & gen
        before = pending.long().cumsum(1) - pending.long()
        eos = torch.isin(self.x, self.eos) & gen & ~self.masked & (before == 0)
        return ~pending.any(1) | eos.any(1)

    def retire(self, done: Tensor) -> list[Finished]:
        """Remove the done rows (and physical rows no longer used); return their results."""
        out = [self._finished(i) for i in done.nonzero().flatten().tolist()]
        keep = (~done).nonzero().flatten()
        for name in _LOGICAL + _LOGICAL_MORE:
            setattr(self, name, getattr(self, name)[keep])
        self.index = [self.index[i] for i in keep.tolist()]
        alive = torch.zeros(self.groups, dtype=torch.bool, device=keep.device)
        alive[self.grp] = True
        if not bool(alive.all()):
            self.grp = (alive.long().cumsum(0) - 1)[self.grp]
            kept = alive.nonzero().flatten()
            self.kpos, self.kseg, self.kvalid = self.kpos[kept], self.kseg[kept], self.kvalid[kept]
            self.kv = self.kv.select(kept)
        return out

    def _finished(self, i: int) -> Finished:
        n, limit = int(self.plen[i]), int(self.limit[i])
        tokens = self.x[i, n : n + limit].tolist()
        cut = next((j for j, t in enumerate(tokens) if t in self.rules.eos), None)
        kept = tokens if cut is None else tokens[:cut]
        finish = "length" if cut is None else "eos"
        forwards, decoded = int(self.forwards[i]), int(self.decoded[i])
        return Finished(self.index[i], tuple(kept), finish, forwards, decoded)
