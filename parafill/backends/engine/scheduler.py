"""The engine's scheduler: admission (first come, first served), prefix sharing, the prefix
cache (LRU), retirement, each slot's visible KV columns (`vis`) and the draft budget (`Drafter`).
`schedule()` turns what arrived into a `StepPlan`; `update()` applies a `StepResult`: every write
to a sequence's state after a step happens here. It runs no forward (runner.py does)."""

from __future__ import annotations

import time

import torch
from torch import Tensor

from parafill.backends.engine.config import EngineConfig, StepOutput
from parafill.backends.engine.drafts import Drafter, learn
from parafill.backends.engine.kv import KVCache
from parafill.backends.engine.plan import StepPlan, StepResult
from parafill.backends.engine.sampling import GenParams
from parafill.backends.engine.schedule import Seq, longest_match, schedule
from parafill.backends.engine.verify import DeadEnd, Window, settle


class Scheduler:
    def __init__(self, config: EngineConfig, cache: KVCache, vis: Tensor, drafter: Drafter) -> None:
        """`vis` (slots + 1, width): which KV columns each slot's sequence sees; the extra last
        slot is for padding lanes. `cache` is used for its allocator (and the KV copies and
        sharing of prefixes at admission)."""
        self.config, self.cache, self.vis, self.drafter = config, cache, vis, drafter
        self.free_slots = list(range(vis.shape[0] - 1))
        self.waiting: list[Seq] = []
        self.live: list[Seq] = []
        self.cached: list[Seq] = []  # finished, KV kept for reuse; least recently used first
        self.reused = 0  # prompt tokens taken from the prefix cache instead of prefilled
        self.steps = 0
        self.drafted = self.accepted = 0  # over all sequences (drafts verified / kept)

    # ---- one step: plan, then apply the result ---------------------------------------------

    def schedule(self, submitted: list[Seq], cancelled: set[int]) -> StepPlan:
        """Take what arrived, admit, draft, and choose the feeds (nothing to run: a plan with
        no work, only the cancelled requests' outputs)."""
        outs = self._drain(submitted, cancelled)
        self._admit()
        work = [s for s in self.live if not s.done_feeding]
        if not work:
            return StepPlan(outputs=tuple(outs))
        width, t0 = self.drafter.width(work), time.perf_counter()
        if self.config.speculate != "off":
            self.drafter.propose(work)
        return StepPlan(
            tuple(work),
            tuple(schedule(work, self.config.prefill_chunk)),
            decode_only=all(s.known - s.fed == 1 and not s.prefix_only for s in work),
            # else the eager step: penalties and drafts are decided on the host
            plain=not any(s.params.adjusts or s.draft for s in work),
            width=width,
            outputs=tuple(outs),
            started=t0,
        )

    def update(self, plan: StepPlan, result: StepResult) -> list[StepOutput]:
        """Apply a step's result: columns visible and fed, tokens settled, drafts learned
        from, finished sequences retired. A sequence that cannot go on ends alone."""
        try:
            self._advance(plan, result)
        except Exception as exc:  # the step's KV is half marked: as if its forward failed
            return self.fail(plan, exc)
        self.steps += 1
        return self._settled(plan, [self._emit_alone(w) for w in result.windows])

    def fail(self, plan: StepPlan, exc: Exception) -> list[StepOutput]:
        """A step that raised ends every sequence in it (its KV may be half written, so none
        of it is kept as a prefix cache); the loop and later requests go on."""
        why = f"{type(exc).__name__}: {exc}"
        return self._settled(plan, [self._retire(s, "error", why) for s in plan.work])

    def _advance(self, plan: StepPlan, result: StepResult) -> None:
        if result.cost is not None:
            self.drafter.policy.cost.add(*result.cost)
        for (seq, _), cols in zip(plan.feeds, result.written, strict=True):
            if not result.marked:
                self.vis[seq.slot, torch.tensor(cols, device=self.vis.device)] = True
            seq.fed += len(cols)
            seq.passes += 1

    def _settled(self, plan: StepPlan, new: list[StepOutput]) -> list[StepOutput]:
        """The step's outputs, after the drafter records its throughput and clears drafts."""
        tokens = sum(len(o.tokens) for o in new)
        elapsed = time.perf_counter() - plan.started
        self.drafter.settle(list(plan.work), plan.width, tokens, elapsed)
        return [*plan.outputs, *new]

    def _emit_alone(self, w: Window) -> StepOutput:
        """One sequence's outcome; whatever goes wrong with it ends that request alone."""
        try:
            return self._emit(w)
        except Exception as exc:  # DeadEnd, or a defect in settling one request
            why = str(exc) if isinstance(exc, DeadEnd) else f"{type(exc).__name__}: {exc}"
            return self._retire(w.seq, "error", why)

    def _emit(self, w: Window) -> StepOutput:
        seq = w.seq
        if w.error is not None:
            return self._retire(seq, "error", w.error)
        n, finish = settle(w)
        seq.fed = min(seq.fed, seq.known - 1)  # nothing at or after a stop is kept
        drafted, accepted = learn(self.drafter.policy, w)
        self.drafted += drafted
        self.accepted += accepted
        rows = w.rows[:n]
        out = StepOutput(
            seq.id, tuple(w.predicted[r] for r in rows), finish, None,
            tuple(w.logprobs[r] for r in rows), tuple(w.tops[r] for r in rows),
            seq.passes, seq.drafted, seq.accepted,
        )  # fmt: skip
        return out if finish is None else self._retire(seq, finish, out=out)

    # ---- admission, sharing, retirement --------------------------------------------------

    def _drain(self, submitted: list[Seq], cancelled: set[int]) -> list[StepOutput]:
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


__all__ = ["Scheduler"]
