"""Drafting with a model, batched over every sequence that asks for it.

Two drafters share this code. **Self-speculation** (`self`): the target with some of its
layers skipped drafts for itself; it reads the target's own KV cache (exact K/V for the
verified prefix) and its drafted tokens write the kept layers' K/V into the columns the
verify step writes next, so nothing is stored twice. **A second model** (`draft`): a
smaller model sharing the target's tokenizer, with a KV cache of its own laid out like the
target's (same rows and columns, its own layers and heads) and its own record of which
columns it has written: a sequence first feeds what the drafter has not seen (its prompt on
first use, a kept draft it never fed), within the step's prefill budget, and the columns of
rejected drafts are dropped again.

A step drafts k tokens with k forwards of the drafter, one token per sequence per forward,
every drafting sequence in the same forward, laid out as the target lays out its own step
(batch rows or one packed row). The drafter's token is its argmax at temperature 0 (then the
verify step keeps exactly what plain decoding would emit) or a seeded draw from its own
distribution q, which goes with the draft for rejection sampling. A sequence stops drafting
once the drafter's running confidence in its chain drops below `floor`: the chance a draft is
kept must be worth one more drafter forward, so the engine sets it to the measured time of a
drafter forward over that of a decode step (0.05 until both are measured).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from parafill.backends.engine.model import CompactLM, StepInput
from parafill.backends.engine.sampling import uniforms
from parafill.backends.engine.schedule import Seq
from parafill.backends.engine.selfspec import drafter_model, layers_for
from parafill.backends.engine.step import _mask, _pairs

if TYPE_CHECKING:
    from parafill.backends.engine.engine import Engine

DRAFT_STREAM = 0x2545F491  # the drafter's draws use the request's seed xor this


@dataclass(frozen=True)
class ModelDraft:
    """What the drafter proposes for one sequence: tokens, its chance for each (its own
    probability of the token), and at temperature > 0 its distribution q per token."""

    tokens: list[int]
    confidence: list[float]  # the chance each is kept: its probability, calibrated (keep_rate)
    q: Tensor | None = None  # (len(tokens), vocab) where the draft was sampled
    raw: list[float] = field(default_factory=list)  # the drafter's own probability of each


@dataclass
class _Seen:
    """Tokens whose K/V a drafter with its own cache holds for a sequence, by position;
    `have[:base]` is known to equal the sequence's tokens."""

    have: list[int] = field(default_factory=list)
    base: int = 0


@dataclass
class _Feed:
    seq: Seq
    positions: list[int]
    tokens: list[int]
    k: int  # drafts still wanted (0: only catches up this step)
    out: list[int] = field(default_factory=list)
    fed: list[int] = field(default_factory=list)  # every token fed, from positions[0] on
    conf: list[float] = field(default_factory=list)
    raw: list[float] = field(default_factory=list)
    q: list[Tensor] = field(default_factory=list)
    chance: float = 1.0


BINS = 10  # confidence bins of the drafter's keep-rate calibration


class ModelDrafter:
    """Drafts for many sequences at once with `model` (the target itself when `own` is
    False: `layers` are the layers it keeps, `vis` the target's visibility; a second model
    with its own cache `k`/`v` when `own` is True)."""

    def __init__(
        self,
        model: CompactLM,
        caches: tuple[Tensor, Tensor],
        vis: Tensor,
        own: bool,
        layers: Sequence[int] | None = None,
        chunk: int = 512,
        floor: float = 0.05,
    ) -> None:
        self.model, self.k, self.v = model, caches[0], caches[1]
        self.own, self.layers, self.chunk, self.floor = own, layers, chunk, floor
        # a second model's own visibility per slot; self-speculation reads the target's
        self.vis = torch.zeros_like(vis) if own else vis
        self.seen: weakref.WeakKeyDictionary[Seq, _Seen] = weakref.WeakKeyDictionary()
        self.owner: dict[int, int] = {}  # slot -> id() of the sequence its visibility is for
        self.forwards = 0
        self.seconds: dict[int, float] = {}  # per width (power of two), one forward's time
        # per bin of the drafter's probability: [kept, judged], a prior of 2 drafts kept at
        # the bin's centre. A drafter close to the target (the int4 copy) is kept far more
        # often than its own probability says; chains go as deep as the kept rate allows
        self.bins = [[2.0 * (i + 0.5) / BINS, 2.0] for i in range(BINS)]

    @torch.inference_mode()
    def draft(self, wants: Sequence[tuple[Seq, int]]) -> list[ModelDraft]:
        """Up to k tokens for each (sequence, k); a sequence still catching up gets none."""
        feeds = self._first_feeds(wants)
        marked: tuple[list[int], list[int]] = ([], [])  # (slots, columns) made visible
        try:
            live = [f for f in feeds if f.positions]
            while live:
                self._forward(live, marked)
                live = self._next_feeds(live)
        finally:
            if not self.own and marked[0]:  # the target's visibility: columns were borrowed
                self._mark(marked, False)
        if self.own:
            for f in feeds:
                self._remember(f)
        return [ModelDraft(f.out, f.conf, torch.stack(f.q) if f.q else None, f.raw) for f in feeds]

    def keep_rate(self, p: float) -> float:
        """How often a draft the drafter gave probability `p` has been kept (with the prior)."""
        kept, judged = self.bins[min(BINS - 1, max(0, int(p * BINS)))]
        return kept / judged

    def learn(self, raw: Sequence[float], accepted: int) -> None:
        """One verify step's verdict on a chain whose drafts had probabilities `raw`: those
        before `accepted` were kept, the one at it was not; later ones were not judged."""
        for j, p in enumerate(raw[: accepted + 1]):
            b = self.bins[min(BINS - 1, max(0, int(p * BINS)))]
            b[0] += j < accepted
            b[1] += 1

    def _first_feeds(self, wants: Sequence[tuple[Seq, int]]) -> list[_Feed]:
        """Per sequence, the positions its first forward feeds: the last token (and, with an
        own cache, everything before it the drafter has not written, within the budget)."""
        budget = self.chunk
        feeds = []
        for seq, k in wants:
            start = self._sync(seq) if self.own else seq.fed
            last = seq.known - 1
            if last - start > budget:  # catch up part of the way; draft next step
                end, k = start + max(budget, 0), 0
            else:
                end = last + 1
            budget -= end - start - 1
            span = list(range(start, end))
            feeds.append(_Feed(seq, span, [seq.token(p) for p in span], k))
        return feeds

    def _sync(self, seq: Seq) -> int:
        """How many positions the drafter's own cache holds for `seq`, its columns past
        that made invisible again (a rejected draft, or a slot now used by another)."""
        seen = self.seen.get(seq)
        if seen is None or self.owner.get(seq.slot) != id(seq):
            seen = self.seen[seq] = _Seen()
            self.owner[seq.slot] = id(seq)
            self.vis[seq.slot] = False
        valid = seen.base
        known = seq.known
        while valid < len(seen.have) and valid < known and seen.have[valid] == seq.token(valid):
            valid += 1
        stale = seq.cols[valid : len(seen.have)]
        if stale:
            self.vis[seq.slot, torch.tensor(stale, device=self.vis.device)] = False
        del seen.have[valid:]
        return valid

    def _remember(self, f: _Feed) -> None:
        """What the drafter's cache now holds: the positions it fed, in order from where
        `_sync` left it (drafts past the known tokens are checked again next step)."""
        seen = self.seen[f.seq]
        seen.have += f.fed
        seen.base = min(len(seen.have), f.seq.known)

    def _mark(self, at: tuple[list[int], list[int]], value: bool) -> None:
        dev = self.vis.device
        self.vis[torch.tensor(at[0], device=dev), torch.tensor(at[1], device=dev)] = value

    def _forward(self, feeds: list[_Feed], marked: tuple[list[int], list[int]]) -> None:
        """One forward feeding each sequence's positions; sample where a draft is wanted.
        The columns written become visible (one index write); `marked` collects them."""
        t0 = time.perf_counter()
        step, sampling = self._inputs(feeds)
        logits = self.model.forward(step, self.k, self.v, self.layers)
        self.forwards += 1
        now: tuple[list[int], list[int]] = ([], [])
        for f in feeds:
            f.fed += f.tokens
            now[0].extend([f.seq.slot] * len(f.positions))
            now[1].extend(f.seq.cols[p] for p in f.positions)
        self._mark(now, True)
        marked[0].extend(now[0])
        marked[1].extend(now[1])
        if sampling:
            self._choose(logits, sampling)  # reads the logits: the forward is done
        if len(step.tokens) == len(feeds):  # decode-shaped (no catch-up): time it
            took, key = time.perf_counter() - t0, _bucket(len(feeds))
            old = self.seconds.get(key)
            self.seconds[key] = took if old is None else old + 0.1 * (took - old)

    def seconds_at(self, n: int) -> float:
        """A forward's measured time for n sequences (0.0: not measured at that width)."""
        return self.seconds.get(_bucket(n), 0.0)

    def _inputs(self, feeds: list[_Feed]) -> tuple[StepInput, list[_Feed]]:
        tokens: list[int] = []
        pos: list[int] = []
        rows: list[int] = []
        cols: list[int] = []
        qslots: list[int] = []
        owner: list[int] = []
        order: list[int] = []
        logits_at: list[int] = []
        per_row: dict[int, int] = {}
        sampling = []
        for i, f in enumerate(feeds):
            n, s = len(f.positions), f.seq
            tokens += f.tokens
            pos += f.positions
            rows += [s.row] * n
            cols += [s.cols[p] for p in f.positions]
            start = per_row.get(s.row, 0)
            qslots += range(start, start + n)
            per_row[s.row] = start + n
            owner += [i] * n
            order += range(n)
            if f.k > len(f.out):
                sampling.append(f)
                logits_at.append(len(tokens) - 1)
        row0 = min(rows)
        width = max(f.seq.max_col for f in feeds) + 1
        shape = (max(rows) + 1 - row0, max(per_row.values()), width)
        dev = self.vis.device
        pair = _pairs(owner, order, [], dev)
        plain = [(f.seq, len(f.positions)) for f in feeds]
        rel = [x - row0 for x in rows]
        mask = _mask(plain, self.vis, owner, pair, cols, shape, rel, qslots)

        def t(xs: list[int]) -> Tensor:
            return torch.tensor(xs, dtype=torch.long, device=self.model.device)

        step = StepInput(
            t(tokens), t(pos), t(rows), t(cols), t(qslots), mask, t(logits_at), row0=row0
        )
        return step, sampling

    def _choose(self, logits: Tensor, feeds: list[_Feed]) -> None:
        """Each sequence's next draft: argmax, or a seeded draw from q at temperature > 0."""
        temps = [f.seq.params.temperature for f in feeds]
        dev = logits.device
        t = torch.tensor([x if x > 0 else 1.0 for x in temps], device=dev)
        probs = torch.softmax(logits.float() / t[:, None], dim=-1)
        tok = probs.argmax(dim=-1)
        hot = [i for i, x in enumerate(temps) if x > 0]
        if hot:
            idx = torch.tensor(hot, device=dev)
            seeds = torch.tensor([feeds[i].seq.seed ^ DRAFT_STREAM for i in hot], device=dev)
            draws = torch.tensor(
                [len(feeds[i].seq.generated) + len(feeds[i].out) for i in hot], device=dev
            )
            u = uniforms(seeds, draws)
            cum = probs[idx].cumsum(dim=-1)
            pick = (cum < (u * cum[:, -1])[:, None]).sum(dim=-1)
            tok[idx] = torch.minimum(pick, torch.tensor(probs.shape[-1] - 1, device=dev))
        chosen = probs.gather(1, tok[:, None])[:, 0].tolist()
        for i, (f, tk, c) in enumerate(zip(feeds, tok.tolist(), chosen, strict=True)):
            rate = self.keep_rate(float(c))
            f.out.append(int(tk))
            f.raw.append(float(c))
            f.conf.append(rate)
            f.chance *= rate
            if temps[i] > 0:
                f.q.append(probs[i])

    def _next_feeds(self, live: list[_Feed]) -> list[_Feed]:
        """Sequences that go on drafting feed their newest draft next."""
        nxt = []
        for f in live:
            if not f.out or len(f.out) >= f.k or f.chance < self.floor:
                continue
            p = f.seq.known - 1 + len(f.out)
            f.positions, f.tokens = [p], [f.out[-1]]
            nxt.append(f)
        return nxt


def _bucket(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def make_drafter(
    kind: str, engine: Engine, layers: Sequence[int] | None, text: Sequence[int]
) -> ModelDrafter | None:
    """The drafter for filler `kind` of `engine`. `self`: `engine.self_model`, else the
    target's weights (packed int4 on the CPU, from the GGUF's blocks where
    `engine.self_blocks` gives them) running
    `layers` (None: calibrated on `text`, cached per model) over the target's cache; None
    where no layer set pays (then the filler decodes one token per step). `draft`: the
    engine's draft model over a cache of its own, as many rows and columns as the target's."""
    chunk = engine.config.prefill_chunk
    if kind == "self":
        drafter = engine.self_model or engine.model
        if engine.config.self_weights == "auto" and engine.self_model is None:
            blocks = engine.self_blocks() if engine.self_blocks else None
            drafter = engine.self_model = drafter_model(engine.model, blocks)
        layers = layers_for(engine.model, text, drafter) if layers is None else layers
        if not layers:
            return None
        caches = (engine.cache.k, engine.cache.v)
        return ModelDrafter(drafter, caches, engine.vis, False, layers, chunk)
    model = engine.draft_model
    if kind != "draft" or model is None:
        return None
    d = model.shapes
    size = (d.layers, engine.cache.spec.rows, d.kv_heads, engine.cache.width, d.head_dim)
    k = torch.zeros(size, dtype=model.dtype, device=model.device)
    return ModelDrafter(model, (k, torch.zeros_like(k)), engine.vis, True, None, chunk)
