"""`DiffusionLM`: Fast-dLLM style greedy decoding of a masked-diffusion LM, many rows at once.

Each row's answer is a canvas of mask tokens decoded in semi-autoregressive blocks; every
step runs one forward over all rows in flight and reveals, per row, the current block's
confident positions (`unmask.py`). A row that is done leaves the batch at once and a waiting
one takes its place (`max_batch`). Branches that share a prompt can be packed into one
sequence (`generate_packed`). Token ids only: tokenizing lives above this package.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from parafill.diffusion.loader import Spec, read_spec, read_weights
from parafill.diffusion.model import Forward
from parafill.diffusion.state import (
    CACHE_MODES,
    Batch,
    Request,
    Rules,
    canvas,
    group_width,
)


@dataclass(frozen=True)
class Options:
    """Decoding options. `block` None: the model's own block size (Fast_dLLM_v2's bd_size,
    32 for LLaDA). `eos` None: the model's EOS ids; () decodes to the full length.
    `max_batch`: physical rows in flight at once (None: all)."""

    block: int | None = None
    threshold: float = 0.9
    factor: float | None = None
    cache: str = "none"
    eos: tuple[int, ...] | None = None
    max_batch: int | None = None


@dataclass(frozen=True)
class Result:
    """One row's output: tokens up to (not including) EOS, at most `max_tokens`."""

    tokens: tuple[int, ...]
    finish: str  # "eos" or "length"
    forwards: int  # forward passes this row took part in
    decoded: int  # canvas positions it revealed (may include some after EOS)

    @property
    def tokens_per_forward(self) -> float:
        return self.decoded / max(self.forwards, 1)


@dataclass(frozen=True)
class Generation:
    results: tuple[Result, ...]  # in the order of the prompts (or branches)
    forwards: int  # forward passes run for the whole batch
    batch_sizes: tuple[int, ...]  # physical rows in each forward
    packed: bool  # whether branches shared one sequence (generate_packed)

    @property
    def tokens_per_forward(self) -> float:
        return sum(r.decoded for r in self.results) / max(self.forwards, 1)


class DiffusionLM:
    """A loaded masked-diffusion model and its decoder."""

    def __init__(self, spec: Spec, forward: Forward) -> None:
        self.spec = spec
        self.forward = forward

    def generate(
        self,
        prompts: list[list[int]],
        max_tokens: int,
        options: Options | None = None,
        **kw: object,
    ) -> Generation:
        """Decode every prompt (token ids) to at most `max_tokens` tokens. Options come as an
        `Options` or as its fields by keyword (block=, threshold=, factor=, cache=, eos=,
        max_batch=)."""
        opts = _options(options, kw)
        if not prompts:
            raise ValueError("no prompts given")
        self._check(prompts, max_tokens, opts)
        groups = [[Request(i, tuple(p), max_tokens)] for i, p in enumerate(prompts)]
        return self._run(groups, opts, packed=False)

    def generate_packed(
        self,
        prefix: list[int],
        tails: list[list[int]],
        max_tokens: int,
        options: Options | None = None,
        **kw: object,
    ) -> Generation:
        """Decode branches `prefix + tail` for each tail, packed into one sequence: the prefix
        (rounded down to whole blocks) is computed once and each branch sees it and its own
        blocks only. Exact for the block-diffusion model; LLaDA's prompt attends to its
        answer, so a shared prefix cannot serve two answers: its branches run as rows."""
        opts = _options(options, kw)
        if not tails:
            raise ValueError("no branches given")
        prompts = [list(prefix) + list(t) for t in tails]
        self._check(prompts, max_tokens, opts)
        if not self.spec.block_causal:
            groups = [[Request(i, tuple(p), max_tokens)] for i, p in enumerate(prompts)]
            return self._run(groups, opts, packed=False)
        shared = len(prefix) // self._block(opts) * self._block(opts)
        group = [Request(i, tuple(p), max_tokens, shared) for i, p in enumerate(prompts)]
        return self._run([group], opts, packed=True)

    def _block(self, opts: Options) -> int:
        return self.spec.block if opts.block is None else opts.block

    def _check(self, prompts: list[list[int]], max_tokens: int, opts: Options) -> None:
        if max_tokens <= 0:
            raise ValueError(f"max_tokens must be positive, got {max_tokens}")
        self._check_options(opts)
        for i, p in enumerate(prompts):
            self._check_prompt(i, p, max_tokens)

    def _check_options(self, opts: Options) -> None:
        if self._block(opts) <= 0:
            raise ValueError(f"block must be positive, got {opts.block}")
        if not 0.0 < opts.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {opts.threshold}")
        if opts.factor is not None and opts.factor <= 0:
            raise ValueError(f"factor must be positive, got {opts.factor}")
        if opts.cache not in CACHE_MODES:
            raise ValueError(f"cache must be one of {CACHE_MODES}, got {opts.cache!r}")
        if opts.max_batch is not None and opts.max_batch <= 0:
            raise ValueError(f"max_batch must be positive, got {opts.max_batch}")

    def _check_prompt(self, i: int, p: Sequence[int], max_tokens: int) -> None:
        s = self.spec
        if max_tokens <= 0:
            raise ValueError(f"max_tokens must be positive, got {max_tokens}")
        if not p:
            raise ValueError(f"prompt {i} is empty")
        bad = [t for t in p if not 0 <= t < s.vocab or t == s.mask_id]
        if bad:
            raise ValueError(
                f"prompt {i} has token ids outside [0, {s.vocab}) or the mask id "
                f"{s.mask_id}: {bad[:5]}"
            )

    def _rules(self, opts: Options) -> Rules:
        s = self.spec
        return Rules(
            block=self._block(opts),
            block_causal=s.block_causal,
            token_shift=s.token_shift,
            mask_id=s.mask_id,
            cache=opts.cache,
            eos=s.eos_ids if opts.eos is None else tuple(opts.eos),
            threshold=opts.threshold,
            factor=opts.factor,
        )

    def _run(self, groups: list[list[Request]], opts: Options, packed: bool) -> Generation:
        session = Session(self, opts)
        for group in groups:
            session.queue(group)
        done: dict[int, Result] = {}
        while session.busy:
            done.update(session.step())
        results = tuple(r for _, r in sorted(done.items()))
        return Generation(results, session.forwards, tuple(session.batch_sizes), packed)


class Session:
    """Step-wise decoding, for a server: prompts join between steps (up to `max_batch` rows
    in flight; the rest wait), each `step()` runs one forward over the rows in flight and
    returns the rows that finished in it. `generate` is this loop with every prompt queued
    up front. Not thread-safe: one thread drives a session."""

    def __init__(self, model: DiffusionLM, options: Options | None = None, **kw: object) -> None:
        opts = _options(options, kw)
        model._check_options(opts)
        self.model, self.options = model, opts
        self.rules = model._rules(opts)
        self.forwards = 0  # forward passes run so far
        self.batch_sizes: list[int] = []  # physical rows in each of them
        self._pending: deque[list[Request]] = deque()
        self._batch: Batch | None = None
        self._keys: set[int] = set()

    def check(self, prompt: Sequence[int], max_tokens: int, context: int | None = None) -> None:
        """Raise ValueError if `add` would refuse this prompt (state is not touched: callable
        from any thread). Also refuses a prompt whose canvas (whole blocks) ends past
        `context` positions (None: the model's, when its config states one)."""
        self.model._check_prompt(0, prompt, max_tokens)
        context = context or self.model.spec.context
        end = canvas(self.rules, len(prompt), max_tokens)[1]
        if context is not None and end > context:
            raise ValueError(
                f"prompt of {len(prompt)} tokens + max_tokens {max_tokens} needs {end} "
                f"positions (whole blocks of {self.rules.block}); the model has {context}"
            )

    def add(self, prompt: Sequence[int], max_tokens: int, key: int | None = None) -> int:
        """Queue a prompt (token ids); it joins the batch at the next step with room. Returns
        its key (`key`, or the next free one), which `step()` returns with its Result."""
        self.check(prompt, max_tokens)
        if key is None:
            key = max(self._keys, default=-1) + 1
        if key in self._keys:
            raise ValueError(f"key {key} is already in this session")
        self.queue([Request(key, tuple(prompt), max_tokens)])
        return key

    def queue(self, group: list[Request]) -> None:
        """Queue one physical row: a request, or the branches of a packed group (checked
        already: `generate` and `generate_packed` check their input as a whole)."""
        self._keys.update(r.index for r in group)
        self._pending.append(group)

    def cancel(self, key: int) -> bool:
        """Drop a queued or running prompt (its row leaves at once, no Result). False if the
        key is unknown or already finished."""
        if key not in self._keys:
            return False
        self._keys.discard(key)
        for group in self._pending:
            if any(r.index == key for r in group):
                group[:] = [r for r in group if r.index != key]
                if not group:
                    self._pending.remove(group)
                return True
        batch = self._batch
        if batch is not None and key in batch.index:
            gone = torch.zeros(batch.rows, dtype=torch.bool, device=batch.bs.device)
            gone[batch.index.index(key)] = True
            batch.retire(gone)
        return True

    @property
    def busy(self) -> bool:
        """Whether a prompt is waiting or in flight."""
        return bool(self._pending) or self.running > 0

    @property
    def running(self) -> int:
        """Rows in flight."""
        return 0 if self._batch is None else self._batch.rows

    @property
    def keys(self) -> tuple[int, ...]:
        """The keys of every prompt waiting or in flight."""
        return tuple(sorted(self._keys))

    @property
    def waiting(self) -> int:
        return sum(len(g) for g in self._pending)

    def _widths(self, groups: Iterable[list[Request]]) -> tuple[int, int]:
        groups = list(groups)
        width = max(canvas(self.rules, len(r.prompt), r.limit)[1] for g in groups for r in g)
        return width, max(group_width(self.rules, g) for g in groups)

    def step(self) -> list[tuple[int, Result]]:
        """Admit waiting prompts while there is room, run one forward over every row in
        flight, reveal; return (key, Result) of the rows that finished in this step."""
        if not self.busy:
            return []
        model, batch = self.model, self._batch
        if batch is None or batch.rows == 0:
            widths = self._widths(self._pending)
            batch = self._batch = Batch(model.spec, self.rules, widths, model.forward.w.embed)
        room = self.options.max_batch or batch.groups + len(self._pending)
        while self._pending and batch.groups < room:
            group = self._pending.popleft()
            batch.widen(self._widths([group]))
            batch.admit(group)
        logits = model.forward(batch.queries(), batch.kv)
        self.forwards += 1
        self.batch_sizes.append(batch.groups)
        finished = batch.apply(logits)
        if not bool(finished.any()):
            return []
        out = [
            (f.index, Result(f.tokens, f.finish, f.forwards, f.decoded))
            for f in batch.retire(finished)
        ]
        self._keys.difference_update(k for k, _ in out)
        return out


def _options(options: Options | None, kw: dict[str, object]) -> Options:
    if options is not None and kw:
        raise ValueError("pass decoding options either as Options or as keywords, not both")
    if options is not None:
        return options
    unknown = set(kw) - set(Options.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown decoding options: {sorted(unknown)}")
    if "eos" in kw and kw["eos"] is not None:
        kw = {**kw, "eos": tuple(kw["eos"])}  # type: ignore[arg-type]
    return Options(**kw)  # type: ignore[arg-type]


def load(path: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu") -> DiffusionLM:
    """Load a Fast_dLLM_v2 (Qwen2-shape block diffusion) or LLaDA checkpoint from a local
    directory holding config.json and safetensors. Other architectures raise ValueError."""
    spec = read_spec(path)
    weights = read_weights(path, spec, dtype, torch.device(device))
    return DiffusionLM(spec, Forward(spec, weights))
