"""Decode steps at static shapes, replayed as CUDA graphs: the engine's GPU fast path.

A decode-only step (every active sequence feeds one token) runs over fixed lanes: in rows
mode one lane per cache row; in tree mode the lanes are padded to a power-of-two bucket and
all query row 0. Tokens, positions and slots stay on the device: the step looks up each
lane's KV column in a per-slot column table, marks it visible, builds the attention mask
from the visibility table, writes K/V, chooses every lane's token (greedy, or a seeded draw
with the lane's temperature and top-p: `sampling.select_rows`) and advances the positions —
no host work per lane. An output constraint's token bitmask is filled on the host (one batched
call for every constrained lane) and copied in; the step masks the choice with it. The host
re-uploads lane state only when the set of lanes changes or an eager step ran in between. On
CPU the same step runs eagerly (that is how it is tested against the reference); on CUDA it is
captured once per bucket and replayed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from parafill.backends.engine.kv import KVCache
from parafill.backends.engine.model import CompactLM, Keys, StepInput
from parafill.backends.engine.sampling import TOP_MAX, Top, select_rows
from parafill.backends.engine.schedule import Seq
from parafill.backends.engine.step import _cols_array

TOKEN, POSITION, SLOT, LIVE, SEED, DRAW = range(6)
TEMP, TOP_P = range(2)
GREEDY, PLAIN, NUCLEUS = range(3)  # what a captured step's token choice must handle


@dataclass(frozen=True)
class _Lanes:
    """Static buffers of one bucket of B lanes."""

    state: Tensor  # (6, B) long: token, position, slot, live (1 for a real lane), seed, draw
    knobs: Tensor  # (2, B) float: temperature (0 = greedy), top-p
    rows: Tensor  # (B,) KV row of each lane's query
    qslots: Tensor  # (B,) query index of each lane within its row
    index: Tensor  # (B,) arange: every lane wants logits
    logits: Tensor  # (B, V) float
    out: Tensor  # (B,) greedy next token
    logp: Tensor  # (B,) its log-probability
    top_v: Tensor  # (B, K) log p of the K most likely tokens (when a lane asks for them)
    top_i: Tensor  # (B, K) their ids
    bitmask: Tensor  # (B, ceil(V/32)) int32: tokens each lane's output constraint allows


class StaticDecoder:
    def __init__(
        self,
        model: CompactLM,
        cache: KVCache,
        vis: Tensor,
        max_lanes: int,
        graphs: bool,
        compile: bool = False,
        ordered: bool = False,
    ) -> None:
        """`ordered`: the model runs ordered attention (CPU only): each lane's key list is
        built on the host every step (no graphs)."""
        self.model, self.cache, self.vis = model, cache, vis  # vis: (slots + 1, width)
        self.tree = cache.spec.mode == "tree"
        self.max_lanes = max_lanes
        self.pad_slot = vis.shape[0] - 1
        self.graphs = graphs
        dev = model.device
        self.col_table = torch.full(
            (vis.shape[0], cache.spec.cols), cache.scratch, dtype=torch.long, device=dev
        )  # (slots + 1, cols): KV column of each position; the pad slot maps to scratch
        self._true = torch.ones((), dtype=torch.bool, device=dev)  # no host scalar in capture
        self._table_owner: dict[int, int] = {}  # slot -> seq id whose columns are uploaded
        self._lanes: dict[int, _Lanes] = {}
        self._captured: dict[tuple[int, int, bool, bool], torch.cuda.CUDAGraph] = {}
        self._choice = GREEDY  # set at upload from the lanes' sampling parameters
        self._top = False  # some lane wants top log-probabilities (set at upload)
        self._masked = False  # some lane has an output constraint (its mask set this step)
        self._host_masks: dict[int, Tensor] = {}  # lanes -> host bitmask buffer
        from parafill.constraints.bitmask import apply_bitmask  # the grammar library, lazily

        self._apply_bitmask = apply_bitmask
        self._pool: Any = None  # one CUDA graph memory pool for every bucket
        self._key: tuple[int, ...] = ()
        self.ordered = ordered
        self._keys: Keys | None = None  # this step's key lists (ordered attention)
        self.fresh = False  # device lane state matches the host's sequences
        self.replays = 0  # static steps run (for tests and benchmarks)
        # torch.compile fuses the step's many small kernels; the graph then replays those (not
        # with ordered attention: its C kernels are opaque to the compiler, and a layer is one
        # call already)
        compiled = compile and not ordered
        self._fn = torch.compile(self._body, dynamic=False) if compiled else self._body

    @torch.inference_mode()
    def step(self, work: list[Seq]) -> tuple[list[int], list[float], list[Top]] | None:
        """One decode step for `work` (each feeds exactly one token): the next token of each
        sequence, its log-probability and (where asked for) the most likely alternatives. None
        (nothing run) when an output constraint allows no token: the eager step reports it."""
        layout = self._layout(work)
        lanes = self._get_lanes(len(layout))
        if not self._set_mask(lanes, layout):
            return None
        key = tuple(s.id if s is not None else -1 for s in layout)
        if key != self._key or not self.fresh:
            self._upload(lanes, layout)
            self._key = key
        if self.ordered:
            self._keys = self._key_lists(layout)
        self._run(lanes)
        self.replays += 1
        toks = lanes.out.tolist()  # the one host sync per step
        logps = lanes.logp.tolist()
        self.fresh = True
        lane_of = {s.id: b for b, s in enumerate(layout) if s is not None}
        tops: list[Top] = [()] * len(work)
        if self._top:
            vals, ids = lanes.top_v.tolist(), lanes.top_i.tolist()
            for j, s in enumerate(work):
                b, k = lane_of[s.id], s.params.top_logprobs
                tops[j] = tuple(zip(ids[b][:k], vals[b][:k], strict=True))
        return (
            [int(toks[lane_of[s.id]]) for s in work],
            [float(logps[lane_of[s.id]]) for s in work],
            tops,
        )

    def _key_lists(self, layout: list[Seq | None]) -> Keys:
        """Each lane's key columns in position order (a padding lane: its scratch column)."""
        rows, cols, ptrs, lens = [], [], [], []
        pad = torch.tensor([self.cache.scratch], dtype=torch.int32)
        for b, s in enumerate(layout):
            rows.append(0 if self.tree else b)
            if s is None:
                cols.append(self.cache.scratch)
                ptrs.append(pad.data_ptr())
                lens.append(1)
                continue
            cols.append(s.cols[s.fed])
            ptrs.append(_cols_array(s).data_ptr())
            lens.append(s.fed + 1)
        i32 = torch.int32
        return Keys(
            torch.tensor(rows, dtype=i32), torch.tensor(cols, dtype=i32),
            torch.tensor(ptrs, dtype=torch.int64), torch.tensor(lens, dtype=i32), (pad,),
        )  # fmt: skip

    def _set_mask(self, lanes: _Lanes, layout: list[Seq | None]) -> bool:
        """Fill the constrained lanes' bitmask rows on the host (one batched call) and copy
        them to the device; the step applies them only when some lane is constrained."""
        masked = [(b, s.matcher) for b, s in enumerate(layout) if s is not None and s.matcher]
        self._masked = bool(masked)
        if not masked:
            return True
        from parafill.constraints import allocate_bitmask, fill_batch

        host = self._host_masks.get(len(layout))
        if host is None:  # one (pinned on CUDA) host buffer per bucket, reused every step
            host = self._host_masks[len(layout)] = allocate_bitmask(
                len(layout), self.model.shapes.vocab
            )
        else:
            # the last step's copy from it finished at that step's host sync (its tokens read)
            host.fill_(-1)  # every lane allowed everything until its matcher fills its row
        ok = fill_batch([m for _, m in masked], host, [b for b, _ in masked])
        lanes.bitmask.copy_(host, non_blocking=True)
        return all(ok)

    def _layout(self, work: list[Seq]) -> list[Seq | None]:
        if not self.tree:
            layout: list[Seq | None] = [None] * self.cache.spec.rows
            for s in work:
                layout[s.row] = s
            return layout
        bucket = 1
        while bucket < len(work):
            bucket *= 2
        return [*work, *([None] * (min(bucket, self.max_lanes) - len(work)))]

    def _get_lanes(self, b: int) -> _Lanes:
        if b not in self._lanes:
            dev = self.model.device
            ar = torch.arange(b, device=dev)
            zeros = torch.zeros(b, dtype=torch.long, device=dev)
            rows, qslots = (zeros, ar) if self.tree else (ar, zeros)
            state = torch.zeros(6, b, dtype=torch.long, device=dev)
            knobs = torch.zeros(2, b, device=dev)
            logits = torch.zeros(b, self.model.shapes.vocab, device=dev)
            logp = torch.zeros(b, device=dev)
            k = min(TOP_MAX, self.model.shapes.vocab)
            top_v, top_i = (
                torch.zeros(b, k, device=dev),
                torch.zeros(b, k, dtype=torch.long, device=dev),
            )
            words = (self.model.shapes.vocab + 31) // 32
            bitmask = torch.full((b, words), -1, dtype=torch.int32, device=dev)
            self._lanes[b] = _Lanes(
                state, knobs, rows, qslots, ar, logits, zeros.clone(), logp, top_v, top_i, bitmask
            )
        return self._lanes[b]

    def _upload(self, lanes: _Lanes, layout: list[Seq | None]) -> None:
        n = len(layout)
        host = [[0] * n, [0] * n, [self.pad_slot] * n, [0] * n, [0] * n, [0] * n]
        knobs = [[0.0] * n, [1.0] * n]
        for b, s in enumerate(layout):
            if s is None:
                continue
            host[TOKEN][b], host[POSITION][b] = s.token(s.fed), s.fed
            host[SLOT][b], host[LIVE][b] = s.slot, 1
            host[SEED][b], host[DRAW][b] = s.seed, len(s.generated)
            knobs[TEMP][b], knobs[TOP_P][b] = s.params.temperature, s.params.top_p
            if self._table_owner.get(s.slot) != s.id:  # a new sequence in this slot
                cols = torch.tensor(s.cols, dtype=torch.long)
                self.col_table[s.slot, : len(s.cols)] = cols.to(self.col_table.device)
                self._table_owner[s.slot] = s.id
        lanes.state.copy_(torch.tensor(host, dtype=torch.long))
        lanes.knobs.copy_(torch.tensor(knobs))
        sampled = [s for s in layout if s is not None and s.params.temperature > 0]
        self._top = any(s is not None and s.params.top_logprobs > 0 for s in layout)
        self._choice = (
            GREEDY
            if not sampled
            else NUCLEUS
            if any(s.params.top_p < 1.0 for s in sampled)
            else PLAIN
        )

    def _body(self, lanes: _Lanes, choice: int, top: bool, masked: bool) -> None:
        """The captured step. Every shape is fixed by the bucket."""
        slots, pos = lanes.state[SLOT], lanes.state[POSITION]
        cols = self.col_table[slots, pos]  # (B,)
        self.vis.index_put_((slots, cols), self._true)
        seen = self.vis[slots]  # (B, width)
        mask = seen[None, None] if self.tree else seen[:, None, None]  # (R, 1, Q, width)
        step = StepInput(
            lanes.state[TOKEN], pos, lanes.rows, cols, lanes.qslots, mask, lanes.index, dense=True,
            keys=self._keys if self.ordered else None,
        )  # fmt: skip
        logits = self.model.run(step, self.cache.k, self.cache.v)
        lanes.logits.copy_(logits)
        chooser = logits
        if masked:  # the choice is masked; log-probabilities stay the model's own
            chooser = logits.clone()
            self._apply_bitmask(chooser, lanes.bitmask)
        if choice == GREEDY:
            lanes.out.copy_(chooser.argmax(dim=-1))
        else:
            st = lanes.state
            temps, top_ps = lanes.knobs[TEMP], lanes.knobs[TOP_P]
            out = select_rows(chooser, temps, top_ps, st[SEED], st[DRAW], choice == NUCLEUS)
            lanes.out.copy_(out)
        best = logits.gather(1, lanes.out[:, None])[:, 0]
        lse = torch.logsumexp(logits, dim=-1)
        lanes.logp.copy_(best - lse)
        if top:
            vals, ids = logits.topk(lanes.top_v.shape[1], dim=-1)
            lanes.top_v.copy_(vals - lse[:, None])
            lanes.top_i.copy_(ids)
        lanes.state[TOKEN].copy_(lanes.out)
        lanes.state[POSITION].add_(lanes.state[LIVE])
        lanes.state[DRAW].add_(lanes.state[LIVE])

    def _run(self, lanes: _Lanes) -> None:
        key = (lanes.index.shape[0], self._choice, self._top, self._masked)
        if not self.graphs:
            self._fn(lanes, *key[1:])
            return
        if key not in self._captured:
            self._captured[key] = self._capture(lanes, *key[1:])
        self._captured[key].replay()

    def _capture(self, lanes: _Lanes, choice: int, top: bool, masked: bool) -> torch.cuda.CUDAGraph:
        """Warm up and capture on padding lanes only (they touch scratch columns), then put
        the real lane state back."""
        real = lanes.state.clone()
        pad = torch.tensor([0, 0, self.pad_slot, 0, 0, 0], device=real.device)[:, None]
        lanes.state.copy_(pad.expand_as(real))
        side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._fn(lanes, choice, top, masked)
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            self._fn(lanes, choice, top, masked)
        lanes.state.copy_(real)
        return graph
