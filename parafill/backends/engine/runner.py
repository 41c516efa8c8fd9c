"""The model runner: `execute(StepPlan) -> StepResult`, the only code of a step touching tensors.
It builds the inputs (step.py), runs the static decoder (graphs.py) or the eager forward, decides
every row (verify.decide), and copies kept side-branch drafts' K/V into their sequence's own
columns: the result then names the columns holding kept K/V, and the scheduler only marks them
visible (scheduler.py). It writes no sequence state."""

from __future__ import annotations

import time

from torch import Tensor

from parafill.backends.engine.config import EngineConfig
from parafill.backends.engine.graphs import StaticDecoder
from parafill.backends.engine.kv import KVCache
from parafill.backends.engine.model import CompactLM, attention_kind
from parafill.backends.engine.plan import StepPlan, StepResult
from parafill.backends.engine.schedule import Seq
from parafill.backends.engine.spec import Shape
from parafill.backends.engine.step import build_step
from parafill.backends.engine.verify import Window, decide


class ModelRunner:
    def __init__(self, model: CompactLM, config: EngineConfig, cache: KVCache, vis: Tensor) -> None:
        """`vis`: the scheduler's visibility table (slots + 1, width); read here, and marked by
        the static decoder on the device."""
        self.model, self.cache, self.vis = model, cache, vis
        self.ordered = attention_kind(model, config.attention) == "ordered"
        cuda = model.device.type == "cuda"
        static = config.decode == "static" or (config.decode == "auto" and cuda)
        slots = vis.shape[0] - 1  # the last slot is for padding lanes
        self.decoder = (
            StaticDecoder(model, cache, vis, slots, cuda, config.compile, self.ordered)
            if static
            else None
        )

    def execute(self, plan: StepPlan) -> StepResult:
        """One forward over the plan's feeds, every logits row decided. Raises whatever the
        forward raises: the caller fails the step's sequences."""
        seqs = [s for s, _ in plan.feeds]  # decode-only: the plan's work, in its order
        static = self.decoder is not None and plan.decode_only and plan.plain
        # device-side state; marks the columns visible. None: a constraint allows no token
        got = self.decoder.step(seqs) if self.decoder is not None and static else None
        if got is None:
            return self._eager(plan)
        tokens, logps, tops = got
        windows = tuple(
            Window(s, [t], [], [lp], [top])
            for s, t, lp, top in zip(seqs, tokens, logps, tops, strict=True)
        )
        return StepResult(windows, tuple((s.cols[s.fed],) for s in seqs), marked=True)

    def _eager(self, plan: StepPlan) -> StepResult:
        step, layout = build_step(list(plan.feeds), self.vis, self.model.device, self.ordered)
        if self.decoder is not None:
            self.decoder.fresh = False  # its device-side tokens and positions are now stale
        t0 = time.perf_counter()
        logits = self.model.forward(step, self.cache.k, self.cache.v)
        windows = decide(logits, layout.sampled)  # the host sync
        cost = None
        if plan.decode_only:  # the costs drafting is weighed against: decode and verify steps
            r, q, length = layout.shape if step.mask is None else _mask_shape(step.mask)
            shape = Shape(int(step.tokens.numel()), r * q, length)
            cost = (shape, time.perf_counter() - t0)
        kept = {id(w.seq): w.path for w in windows if w.seq.draft}
        written = tuple(
            tuple(self._keep(seq, kept[id(seq)]) if id(seq) in kept else cols)
            for seq, cols in layout.written
        )  # rejected drafts' columns are left out: they stay invisible
        return StepResult(tuple(windows), written, cost=cost)

    def _keep(self, seq: Seq, path: list[int]) -> list[int]:
        """The columns of the last token and the kept drafts, side-branch K/V copied into
        the sequence's own columns."""
        own = seq.cols[seq.fed : seq.fed + 1 + len(path)]
        moves = [
            (seq.draft_cols[j], c)
            for j, c in zip(path, own[1:], strict=True)
            if seq.draft_cols[j] != c
        ]
        if moves:
            self.cache.copy(seq.row, [a for a, _ in moves], seq.row, [b for _, b in moves])
        return own


def _mask_shape(mask: Tensor) -> tuple[int, int, int]:
    r, _, q, length = mask.shape
    return r, q, length


__all__ = ["ModelRunner"]
