"""The decode engine: continuous admission, shared prefixes, one forward per step.

Token ids only. `submit` and `cancel` are thread-safe; `step` runs one forward over every
active sequence's new tokens (prefill chunks and decode tokens together) and returns what
each produced. `serve` is the loop run in the engine's own thread. Tokenizing, chat templates
and stop strings live above, in `parafill.backends.local`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from parafill.backends.engine.config import EngineConfig, StepOutput
from parafill.backends.engine.drafts import Drafter, learn
from parafill.backends.engine.graphs import StaticDecoder
from parafill.backends.engine.kv import (
    BudgetError,
    CacheSpec,
    KVCache,
    bytes_per_token,
    tokens_in,
)
from parafill.backends.engine.limits import Limits
from parafill.backends.engine.loop import Inbox, serve
from parafill.backends.engine.model import CompactLM, kv_dtype
from parafill.backends.engine.modeldraft import ModelDrafter, make_drafter
from parafill.backends.engine.params import check_lexical
from parafill.backends.engine.sampling import (
    GenParams,
    check_bias,
    check_prompt,
    resolve_seed,
)
from parafill.backends.engine.schedule import Seq, longest_match
from parafill.backends.engine.spec import Shape
from parafill.backends.engine.step import build_step
from parafill.backends.engine.verify import DeadEnd, Window, decide, settle
from parafill.fillers.base import Proposer
from parafill.fillers.model import ModelDrafts

if TYPE_CHECKING:
    from parafill.constraints import Compiled


class Engine:
    def __init__(
        self, model: CompactLM, config: EngineConfig | None = None, draft: CompactLM | None = None
    ) -> None:
        """`draft`: a second model for the `draft` filler (same vocabulary); its KV cache is
        laid out like the target's and counted in `budget_bytes`."""
        self.model = model
        self.config = cfg = config or EngineConfig()
        if draft is not None and draft.shapes.vocab != model.shapes.vocab:
            raise ValueError(
                f"the draft model's vocabulary ({draft.shapes.vocab}) differs from the "
                f"target's ({model.shapes.vocab}): a drafter must share the target's tokenizer"
            )
        self.draft_model = draft
        layers = cfg.self_layers or ()
        if any(not 0 <= i < model.shapes.layers for i in layers) or len(set(layers)) < len(layers):
            raise ValueError(
                f"self_layers {list(layers)} must be distinct layer indices of this model "
                f"(0..{model.shapes.layers - 1})"
            )
        kv = kv_dtype(model, cfg.attention)
        if cfg.budget_bytes is not None:
            per_token = bytes_per_token(model.shapes, kv)
            if draft is not None:
                per_token += bytes_per_token(draft.shapes, draft.dtype)
            rows = cfg.rows if cfg.mode == "rows" else 1
            cfg = replace(cfg, budget_tokens=tokens_in(cfg.budget_bytes, per_token, rows))
            self.config = cfg
        spec = CacheSpec.from_budget(cfg.mode, cfg.budget_tokens, cfg.rows)
        self.cache = KVCache(spec, model.shapes, kv, str(model.device))
        slots = spec.rows if cfg.mode == "rows" else cfg.max_seqs
        # which KV columns each slot's sequence sees; the extra last slot is for padding lanes
        self.vis = torch.zeros(slots + 1, self.cache.width, dtype=torch.bool, device=model.device)
        self.free_slots = list(range(slots))
        cuda = model.device.type == "cuda"
        static = cfg.decode == "static" or (cfg.decode == "auto" and cuda)
        self.decoder = (
            StaticDecoder(model, self.cache, self.vis, slots, cuda, cfg.compile) if static else None
        )
        self.waiting: list[Seq] = []
        self.live: list[Seq] = []
        self.cached: list[Seq] = []  # finished, KV kept for reuse; least recently used first
        self.reused = 0  # prompt tokens taken from the prefix cache instead of prefilled
        self.steps = 0
        self.drafted = self.accepted = 0  # over all sequences (drafts verified / kept)
        self.drafter = Drafter(
            cfg, model.shapes.vocab, self.cache.alloc, self.cache.release, self._model_drafter
        )
        self.model_drafters: dict[str, ModelDrafter | None] = {}  # None: drafting does not pay
        self.self_model: CompactLM | None = None  # the self-drafter's weights, once made
        # the GGUF's own Q4 blocks for the self-drafter's int4 weights (selfspec.py), if any
        self.self_blocks: Callable[[], dict[str, tuple[Tensor, Tensor, Tensor]]] | None = None
        self.calibration: list[int] | None = None  # text the self-drafter is calibrated on
        self.policy = self.drafter.policy
        self._inbox: Inbox[Seq] = Inbox()

    @property
    def limits(self) -> Limits:
        spec, cfg, positions = self.cache.spec, self.config, len(self.model.cos)
        seqs = spec.rows if cfg.mode == "rows" else cfg.max_seqs
        return Limits(
            self.model.shapes.vocab, positions, min(spec.cols, positions),  # a row, rotary table
            spec.rows, spec.cols, self.cache.nbytes, seqs, True, cfg.speculate != "off",
        )  # fmt: skip

    # ---- thread-safe entry points -------------------------------------------------------

    def submit(
        self,
        prompt: list[int],
        params: GenParams,
        proposer: Proposer | None = None,
        constraint: Compiled | None = None,
    ) -> int:
        """Queue a request; `proposer` drafts tokens to verify each step (None: one per step);
        `constraint` (compiled for this model's logits width) restricts every token chosen."""
        check_prompt(prompt, self.model.shapes.vocab)
        check_bias(params, self.model.shapes.vocab)
        check_lexical(params)
        need = len(prompt) + params.max_tokens
        self.cache.check_fits(need)
        if need > len(self.model.cos):  # past the rotary table the step fails for everyone in it
            raise BudgetError(
                f"request needs {need} positions but the model is set up for "
                f"{len(self.model.cos)}; raise max_positions or lower max_tokens"
            )
        if isinstance(proposer, ModelDrafts) and proposer.kind == "draft" and not self.draft_model:
            raise ValueError(
                "filler 'draft' needs a draft model: start with --draft-model PATH "
                "(LocalConfig(draft_model=...))"
            )
        seed = resolve_seed(params)
        matcher = constraint.matcher() if constraint is not None else None
        return self._inbox.put(
            lambda i: Seq(i, list(prompt), params, seed, proposer=proposer, matcher=matcher)
        )

    def cancel(self, seq_id: int) -> None:
        self._inbox.cancel(seq_id)

    def serve(self, deliver: Callable[[list[StepOutput]], None], stop: threading.Event) -> None:
        """Run steps until `stop` is set; idle waits do not spin."""
        serve(self._inbox, self.step, lambda: bool(self.live or self.waiting), deliver, stop)

    def wake(self) -> None:
        self._inbox.wake()

    def _model_drafter(self, kind: str, seq: Seq) -> ModelDrafter | None:
        """The batched drafter for a model filler, made on first use (the `self` one
        calibrated then, on `calibration` or else this sequence's prompt)."""
        if kind not in self.model_drafters:
            text = self.calibration or seq.prompt
            self.model_drafters[kind] = make_drafter(kind, self, self.config.self_layers, text)
        return self.model_drafters[kind]

    # ---- one step ------------------------------------------------------------------------

    def step(self) -> list[StepOutput]:
        outs = self._drain_inbox()
        self._admit()
        work = [s for s in self.live if not s.done_feeding]
        if not work:
            return outs
        width, t0 = self.drafter.width(work), time.perf_counter()
        if self.config.speculate != "off":
            self.drafter.propose(work)
        try:
            new = self._forward(work)
        except Exception as exc:  # a failed forward fails the sequences in it, not the loop
            new = [self._retire(s, "error", f"{type(exc).__name__}: {exc}") for s in work]
        tokens = sum(len(o.tokens) for o in new)
        self.drafter.settle(work, width, tokens, time.perf_counter() - t0)
        return outs + new

    def _forward(self, work: list[Seq]) -> list[StepOutput]:
        decode_only = all(s.known - s.fed == 1 and not s.prefix_only for s in work)
        # else the eager step: penalties and drafts are decided on the host
        plain = not any(s.params.adjusts or s.draft for s in work)
        # device-side state; marks the columns visible. None: a constraint allows no token
        got = self.decoder.step(work) if self.decoder and decode_only and plain else None
        if got is not None:
            tokens, logps, tops = got
            for seq in work:
                seq.fed += 1
                seq.passes += 1
            windows = [
                Window(s, [t], [], [lp], [top])
                for s, t, lp, top in zip(work, tokens, logps, tops, strict=True)
            ]
        else:
            windows = self._eager_forward(work, decode_only)
        self.steps += 1
        return [self._emit_alone(w) for w in windows]

    def _emit_alone(self, w: Window) -> StepOutput:
        """One sequence's outcome; whatever goes wrong with it ends that request alone."""
        try:
            return self._emit(w)
        except Exception as exc:  # DeadEnd, or a defect in settling one request
            why = str(exc) if isinstance(exc, DeadEnd) else f"{type(exc).__name__}: {exc}"
            return self._retire(w.seq, "error", why)

    def _eager_forward(self, work: list[Seq], decode_only: bool) -> list[Window]:
        step, plan = build_step(work, self.vis, self.config.prefill_chunk, self.model.device)
        if self.decoder is not None:
            self.decoder.fresh = False  # its device-side tokens and positions are now stale
        t0 = time.perf_counter()
        logits = self.model.forward(step, self.cache.k, self.cache.v)
        windows = decide(logits, plan.sampled)  # the host sync
        if decode_only:  # the costs drafting is weighed against: decode and verify steps
            r, _, q, length = step.mask.shape
            shape = Shape(int(step.tokens.numel()), r * q, length)
            self.policy.cost.add(shape, time.perf_counter() - t0)
        kept = {id(w.seq): w.path for w in windows if w.seq.draft}
        for seq, cols in plan.written:
            if id(seq) in kept:  # rejected drafts stay invisible
                cols = self._keep(seq, kept[id(seq)])
            self.vis[seq.slot, torch.tensor(cols, device=self.vis.device)] = True
            seq.fed += len(cols)
            seq.passes += 1
        return windows

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

    def _emit(self, w: Window) -> StepOutput:
        seq = w.seq
        if w.error is not None:
            return self._retire(seq, "error", w.error)
        n, finish = settle(w)
        seq.fed = min(seq.fed, seq.known - 1)  # nothing at or after a stop is kept
        self._learn(w)
        rows = w.rows[:n]
        out = StepOutput(
            seq.id, tuple(w.predicted[r] for r in rows), finish, None,
            tuple(w.logprobs[r] for r in rows), tuple(w.tops[r] for r in rows),
            seq.passes, seq.drafted, seq.accepted,
        )  # fmt: skip
        return out if finish is None else self._retire(seq, finish, out=out)

    def _learn(self, w: Window) -> None:
        drafted, accepted = learn(self.policy, w)
        self.drafted += drafted
        self.accepted += accepted

    # ---- admission, sharing, retirement --------------------------------------------------

    def _drain_inbox(self) -> list[StepOutput]:
        submitted, cancelled = self._inbox.take()
        self.waiting += submitted
        outs = [StepOutput(s.id, (), "cancelled") for s in self.waiting if s.id in cancelled]
        self.waiting = [s for s in self.waiting if s.id not in cancelled]
        outs += [self._retire(s, "cancelled") for s in list(self.live) if s.id in cancelled]
        return outs

    def _admit(self) -> None:
        still: list[Seq] = []
        blocked = False
        for seq in self.waiting:
            if blocked or not self._try_admit(seq):
                blocked = True  # first come, first served: later requests wait behind
                still.append(seq)
        self.waiting = still
        self._release_unused_prefixes()

    def _try_admit(self, seq: Seq) -> bool:
        donor, m = longest_match(seq.prompt, self.live + self.cached, written_only=True)
        _, planned = longest_match(seq.prompt, self.live, written_only=False)
        if planned >= m + self.config.min_share:
            return False  # a shared prefix is being prefilled; fork from it next step
        sibling = max(
            (longest_match(seq.prompt, [w])[1] for w in self.waiting if w is not seq), default=0
        )
        roomy = len(self.free_slots) >= 2  # a prefix in the last slot would block its forks
        if roomy and sibling >= max(m + self.config.min_share, self.config.min_share):
            prefix = Seq(-1, seq.prompt[:sibling], GenParams(max_tokens=0), 0, prefix_only=True)
            self._place(prefix, donor, m)
            return False
        return self._place(seq, donor if m >= self.config.min_share else None, m)

    def _place(self, seq: Seq, donor: Seq | None, m: int) -> bool:
        m = min(m, len(seq.prompt) - 1) if donor is not None else 0
        if donor is None or m == 0:
            donor, m = None, 0
        elif donor in self.cached:  # most recently used goes last
            self.cached.remove(donor)
            self.cached.append(donor)
        if not self.free_slots:
            return False  # cached entries hold no slot: evicting them would not help
        while not self._place_now(seq, donor, m):
            victim = next((c for c in self.cached if c is not donor), None)
            if victim is None and donor is not None and donor in self.cached:
                victim, donor, m = donor, None, 0  # its room is needed more than its prefix
            if victim is None:
                return False
            self._evict(victim)
        self.reused += m
        return True

    def _place_now(self, seq: Seq, donor: Seq | None, m: int) -> bool:
        total = len(seq.prompt) + seq.params.max_tokens
        tree = self.config.mode == "tree"
        adopt = not tree and donor is not None and self._adoptable(donor, m)
        if adopt:  # rows mode, finished donor: take over its row in place, no copy
            assert donor is not None
            self.cached.remove(donor)
            self.cache.release(donor.row, donor.cols[m:])  # the row now holds just the prefix
            got = self.cache.alloc(total - m, row=donor.row)
            assert got is not None  # a request fits a row (checked at submit)
            seq.row, cols = donor.row, donor.cols[:m] + got[1]
        else:
            got = self.cache.alloc(total - m if tree else total)
            if got is None:
                return False
            seq.row, cols = got
        seq.slot = self.free_slots.pop()
        self.vis[seq.slot] = False
        if donor is not None and m > 0:
            shared = donor.cols[:m]
            if tree:
                self.cache.share(seq.row, shared)
                cols = shared + cols
            elif not adopt:
                self.cache.copy(donor.row, shared, seq.row, cols[:m])
            self.vis[seq.slot, torch.tensor(cols[:m], device=self.vis.device)] = True
        seq.cols, seq.fed = cols, m
        seq.max_col, seq.hi, seq.hi_n = max(cols), -1, 0
        self.live.append(seq)
        return True

    def _adoptable(self, donor: Seq, m: int) -> bool:
        """Rows mode: take over a cached donor's row (trimmed to the m shared columns) when
        that keeps most of what it holds, or when no row is empty; else copy the m columns
        into an empty row and keep the donor whole (a chat template shared by every request
        would otherwise be cut down to the first m tokens another prompt happens to share)."""
        if donor not in self.cached:
            return False
        empty = any(f == self.cache.spec.cols for f in self.cache.free_cols)
        return 2 * m >= donor.fed or not empty

    def _evict(self, seq: Seq) -> None:
        self.cached.remove(seq)
        self.cache.release(seq.row, seq.cols)

    def drop_cached(self) -> int:
        """Evict every retained prefix (engine thread only); returns how many there were."""
        n = len(self.cached)
        for seq in list(self.cached):
            self._evict(seq)
        return n

    def _release_unused_prefixes(self) -> None:
        for p in [s for s in self.live if s.prefix_only and s.done_feeding]:
            wanted = any(
                longest_match(w.prompt, [p])[1] >= self.config.min_share for w in self.waiting
            )
            # with no row free for its forks, a prefix would hold one while they wait: it goes
            # to the prefix cache instead (KV kept, row freed; forks take it from there) or,
            # with retain off, is dropped (forks prefill it themselves)
            if not wanted or not self.free_slots:
                self._retire(p, "stop")

    def _retire(
        self,
        seq: Seq,
        finish: str,
        error: str | None = None,
        out: StepOutput | None = None,
    ) -> StepOutput:
        if seq in self.live:
            self.live.remove(seq)
            self.free_slots.append(seq.slot)
            if self.config.retain and finish != "error" and seq.fed > 0:
                self.cached.append(seq)  # its written KV stays as a prefix cache
            else:
                self.cache.release(seq.row, seq.cols)
        return out or StepOutput(seq.id, (), finish, error)


__all__ = ["BudgetError", "Engine", "EngineConfig", "StepOutput"]
