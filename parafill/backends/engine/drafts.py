"""A proposer's answer as the engine uses it: checked, ordered by value, cut to a budget.

Pure Python (no torch import; columns are borrowed through the cache's allocator). A
proposal is a chain (a plain list, or a `Draft` without parents) or a tree
(`Draft.parents`). Each draft's value is the chance it is kept: its own chance given its
parent was kept, times the parent's value. Drafts are ordered by value (a parent is never
worth less than its child, so every prefix of the order is a tree), which is the order the
step-cost policy spends its budget in. A proposal that breaks the protocol (a token outside
the vocabulary, a parent that is not an earlier draft, lengths that disagree) raises
`ValueError`: the engine then drops that sequence's proposer, and nobody else notices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from parafill.backends.engine.schedule import Seq, lineage, main_line, reach
from parafill.backends.engine.spec import Arms, Shape, SpecPolicy
from parafill.fillers.base import Draft, Outcome
from parafill.fillers.model import ModelDrafts

if TYPE_CHECKING:
    from parafill.backends.engine.config import EngineConfig
    from parafill.backends.engine.modeldraft import ModelDrafter
    from parafill.backends.engine.verify import Window

BACKOFF = 16  # the most steps a sequence goes without asking its proposer after refusals
MODEL_K = 8  # the most tokens a model drafter drafts per step (one forward each)
Alloc = Callable[[int, int], "tuple[int, list[int]] | None"]  # (n, row) -> (row, columns)
Release = Callable[[int, list[int]], None]  # (row, columns)
Models = Callable[[str, Seq], "ModelDrafter | None"]  # (filler kind, a sequence) -> drafter


@dataclass(frozen=True)
class Offer:
    tokens: list[int]
    parents: list[int]  # per draft, the one it follows (-1: the last token), in this order
    nodes: list[int]  # per draft, its index in the proposer's answer
    values: list[float]  # per draft, the chance it is kept; non-increasing

    def chances(self) -> list[float]:
        """Each value over the one before it: their running products are the values."""
        out, before = [], 1.0
        for v in self.values:
            out.append(v / before if before > 0 else 0.0)
            before = v
        return out

    def cut(self, k: int) -> Offer:
        return Offer(self.tokens[:k], self.parents[:k], self.nodes[:k], self.values[:k])

    def only(self, keep: Sequence[bool]) -> Offer:
        """The drafts marked in `keep` (closed under parents), parents renumbered."""
        new = {-1: -1}
        out = Offer([], [], [], [])
        for j, ok in enumerate(keep):
            if ok:
                new[j] = len(out.tokens)
                out.tokens.append(self.tokens[j])
                out.parents.append(new[self.parents[j]])
                out.nodes.append(self.nodes[j])
                out.values.append(self.values[j])
        return out


def offer(got: Draft | Sequence[int], rate: float, k: int, room: int, vocab: int) -> Offer:
    """Check and order a proposal. A plain list is a chain of up to `k` drafts, each kept with
    the sequence's running rate; no draft deeper than `room` (tokens left to emit) is kept."""
    if isinstance(got, Draft):
        toks, conf, parents = list(got.tokens), list(got.confidence), list(got.parents)
        if not parents:
            parents = list(range(-1, len(toks) - 1))
        if not len(toks) == len(conf) == len(parents):
            raise ValueError("a draft needs one confidence and one parent per token")
    else:
        toks = list(got)[:k]
        conf, parents = [rate] * len(toks), list(range(-1, len(toks) - 1))
    for j, (t, p) in enumerate(zip(toks, parents, strict=True)):
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab:
            raise ValueError(f"drafted token {t!r} is not an id of this model")
        if not isinstance(p, int) or not -1 <= p < j:
            raise ValueError(f"draft {j} follows {p!r}, not an earlier draft")
    lines = lineage(parents)
    value: list[float] = []
    for c, p in zip(conf, parents, strict=True):
        value.append(min(1.0, max(0.0, float(c))) * (value[p] if p >= 0 else 1.0))
    order = sorted(
        (j for j in range(len(toks)) if len(lines[j]) <= room),
        key=lambda j: (-value[j], len(lines[j]), j),
    )
    at = {-1: -1} | {j: i for i, j in enumerate(order)}
    return Offer(
        [toks[j] for j in order],
        [at[parents[j]] for j in order],
        order,
        [value[j] for j in order],
    )


class Drafter:
    """Each step: ask every decoding sequence's proposer, weigh the offers against the
    measured step costs (`SpecPolicy`), and set the drafts and their KV columns."""

    def __init__(
        self,
        config: EngineConfig,
        vocab: int,
        alloc: Alloc,
        release: Release,
        models: Models | None = None,
    ) -> None:
        self.config, self.vocab, self.alloc, self.release = config, vocab, alloc, release
        self.models = models
        self.ran = False  # a model drafter ran this step
        self.skipped = 0  # steps in a row the drafting check sent model drafters away
        self.policy = SpecPolicy()
        self.arms = Arms()

    @staticmethod
    def width(work: list[Seq]) -> int | None:
        """The step's batch width for `Arms` (None: the step also prefills)."""
        if any(s.known - s.fed != 1 or s.prefix_only for s in work):
            return None
        return Arms.width(len(work))

    def settle(self, work: list[Seq], width: int | None, tokens: int, seconds: float) -> None:
        """After the step: record its throughput, give back borrowed columns, clear drafts."""
        drafted = any(s.draft for s in work) or self.ran  # a drafter's forwards count too
        self.ran = False
        if width is not None and self.config.speculate == "auto":
            self.arms.record(width, drafted, tokens, seconds)
        for s in work:
            if s.scratch:
                self.release(s.row, s.scratch)
            s.draft, s.parents, s.draft_cols, s.scratch, s.nodes = [], [], [], [], []
            s.draft_q = None

    def propose(self, work: list[Seq]) -> None:
        """Draft for each decoding sequence with a proposer, as many tokens as the measured
        step costs say pay (all it offers with speculate="always"), never past max_tokens."""
        decoding = [s for s in work if s.known - s.fed == 1 and not s.prefix_only]
        width = self.width(work)
        if self.config.speculate == "auto" and width is not None and not self.arms.allow(width):
            return  # measured: at this width, steps without drafts are faster
        self._model_drafts(work, decoding)
        offers: list[tuple[Seq, Offer]] = []
        for s in decoding:
            room = s.params.max_tokens - len(s.generated) - 1
            if s.proposer is None or room <= 0:
                continue
            if s.wait > 0:  # its recent offers were not worth verifying: skip the proposer
                s.wait -= 1
                continue
            try:  # a failing proposer costs its sequence the drafts, nothing more
                got = s.proposer.propose(s.prompt + s.generated, min(self.policy.k_max, room))
                o = offer(got, s.rate, s.k, room, self.vocab)
            except Exception:
                s.proposer, o = None, None
            if o is not None and o.tokens:
                offers.append((s, o))
            else:
                s.rate = self.policy.next_rate(s.rate, 0, 0)
        if not offers:
            return
        if self.config.speculate == "auto":
            shape, rows = self._shape(work, len(decoding))
            asks = [o.chances() for _, o in offers]
            ks = self.policy.allocate(shape, rows, len(decoding), asks)
        else:
            ks = [len(o.tokens) for _, o in offers]
        for (s, o), k in zip(offers, ks, strict=True):
            if k:
                s.idle = 0
                self._set_draft(s, o.cut(k))
                p = s.proposer
                if (
                    isinstance(p, ModelDrafts)
                    and p.q is not None
                    and not any(a != j - 1 for j, a in enumerate(s.parents))
                ):  # a sampled model draft (a chain): verified by rejection sampling
                    s.draft_q = p.q[: len(s.draft)]
            else:  # back off: 1, 3, 7, 15 steps without asking (a proposer costs host time)
                s.idle += 1
                s.wait = min(2**s.idle, BACKOFF) - 1

    def _model_drafts(self, work: list[Seq], decoding: list[Seq]) -> None:
        """Run each model drafter once for all the sequences that use it (batched forwards);
        their proposers hand the result on. A drafter that fails costs those sequences
        their drafts, nothing more. A chain goes on while its chance of being kept exceeds
        a drafter forward's time over the step's (measured)."""
        wants: dict[str, list[tuple[Seq, int]]] = {}
        if self.config.speculate == "auto" and self.arms.losing(Arms.width(len(decoding))):
            return  # a step that also prefills: drafter forwards lose at this decode width
        for s in decoding:
            room = s.params.max_tokens - len(s.generated) - 1
            if isinstance(s.proposer, ModelDrafts) and s.wait == 0 and room > 0:
                wants.setdefault(s.proposer.kind, []).append((s, min(s.k, room, MODEL_K)))
        for kind, items in wants.items():
            drafter = None
            try:
                drafter = self.models(kind, items[0][0]) if self.models else None
                if drafter is not None and self.config.speculate == "auto":
                    items = self._worth(work, decoding, items, drafter)
                got = drafter.draft(items) if drafter is not None and items else None
                self.ran = self.ran or got is not None
            except Exception:
                got = None
            if drafter is not None and not items:
                continue
            for i, (s, _) in enumerate(items):
                p = s.proposer
                assert isinstance(p, ModelDrafts)
                if got is None:
                    s.proposer = None
                elif got[i].tokens and drafter is not None:
                    p.pending = Draft(tuple(got[i].tokens), tuple(got[i].confidence))
                    p.q, p.raw, p.learn = got[i].q, tuple(got[i].raw), drafter.learn

    def _worth(
        self, work: list[Seq], decoding: list[Seq], items: list[tuple[Seq, int]], drafter: Any
    ) -> list[tuple[Seq, int]]:
        """How deep the drafter should go, from the measured costs of steps and of its own
        forwards at this width (none: no draft this step); its chains also stop where their
        chance of being kept is below a drafter forward's time over the step's."""
        shape, rows = self._shape(work, len(decoding))
        forward = drafter.seconds_at(len(items))
        # a sequence not drafted for yet is valued at its step-mates' rate (optimistic alone)
        tried = [s.rate for s, _ in items if s.drafted]
        fresh = sum(tried) / len(tried) if tried else 0.9
        rates = [s.rate if s.drafted else fresh for s, _ in items]
        depth = self.policy.depth(shape, rows, len(decoding), rates, forward, MODEL_K)
        base = self.policy.cost(shape)
        if base and forward:
            drafter.floor = min(0.9, forward / base)
        self.skipped = 0 if depth else self.skipped + 1
        if self.skipped >= BACKOFF:  # now and then a short draft, so the rates stay current
            depth, self.skipped = 2, 0
        return [(s, min(k, depth)) for s, k in items] if depth else []

    def _set_draft(self, s: Seq, o: Offer) -> None:
        """Drafts on the first-child chain write the sequence's own next columns; side
        branches borrow columns of its row for this step (none free: only the chain runs).
        A constrained sequence verifies a chain only (its masks follow one line of drafts)."""
        main = main_line(o.parents)
        if s.matcher is not None and not all(main):
            o, main = o.only(main), [True] * main.count(True)
        side = main.count(False)
        got = self.alloc(side, s.row) if side else None
        if side and got is None:
            o = o.only(main)
            main = [True] * len(o.tokens)
        borrowed = list(got[1]) if got else []
        s.scratch = list(borrowed)
        s.draft, s.parents, s.nodes = o.tokens, o.parents, o.nodes
        s.draft_cols = [
            s.cols[s.fed + len(line)] if on else borrowed.pop()
            for line, on in zip(lineage(o.parents), main, strict=True)
        ]
        s.expect = sum(o.values)

    def _shape(self, work: list[Seq], decoding: int) -> tuple[Shape, int]:
        """The coming step's shape without drafts, and its batch rows (0 in tree mode)."""
        prefill = min(sum(s.known - s.fed for s in work) - decoding, self.config.prefill_chunk)
        # the step without drafts: each decoding sequence feeds its last token, a prefill
        # up to its chunk (`step._extent`; drafts add their columns)
        length = max(reach(s, s.fed + max(1, min(prefill, s.known - s.fed))) for s in work) + 1
        if self.config.mode == "tree":
            return Shape(decoding + prefill, decoding + prefill, length), 0
        rows = max(s.row for s in work) + 1
        widest = max(1, min(prefill, max(s.known - s.fed for s in work)))
        return Shape(decoding + prefill, rows * widest, length), rows


def learn(policy: SpecPolicy, w: Window) -> tuple[int, int]:
    """After a step: the sequence's proposer observes what was kept of its drafts, and the
    policy and the sequence's draft length and acceptance rate learn from it. Returns the
    drafts verified and kept (the engine's totals)."""
    seq, drafted = w.seq, len(w.seq.draft)
    if seq.proposer is None:
        return 0, 0
    try:
        outcome = Outcome(
            tuple(seq.draft), tuple(w.predicted), w.accepted, tuple(seq.parents),
            tuple(w.path), tuple(seq.nodes),
        )  # fmt: skip
        seq.proposer.observe(outcome)
    except Exception:  # as in Drafter.propose: decode on without drafts
        seq.proposer = None
    if not drafted:
        return 0, 0
    policy.calibrate(seq.expect, w.accepted)
    seq.drafted += drafted
    seq.accepted += w.accepted
    seq.k = policy.next_k(seq.k, drafted, w.accepted)
    seq.rate = policy.next_rate(seq.rate, drafted, w.accepted)
    return drafted, w.accepted
