"""`DiffusionLM`: Fast-dLLM style greedy decoding of a masked-diffusion LM, many rows at once.

Each row's answer is a canvas of mask tokens decoded in semi-autoregressive blocks; every
step runs one forward over all rows in flight and reveals, per row, the current block's
confident positions (`unmask.py`). A row that is done leaves the batch at once and a waiting
one takes its place (`max_batch`). Branches that share a prompt can be packed into one
sequence (`generate_packed`). Token ids only: tokenizing lives above this package.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path

import torch

from parafill.diffusion.loader import Spec, read_spec, read_weights
from parafill.diffusion.model import Forward
from parafill.diffusion.state import (
    CACHE_MODES,
    Batch,
    Finished,
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
        s = self.spec
        if max_tokens <= 0:
            raise ValueError(f"max_tokens must be positive, got {max_tokens}")
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
        for i, p in enumerate(prompts):
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
        rules = self._rules(opts)
        width = max(canvas(rules, len(r.prompt), r.limit)[1] for g in groups for r in g)
        pwidth = max(group_width(rules, g) for g in groups)
        batch = Batch(self.spec, rules, (width, pwidth), self.forward.w.embed)
        pending, done, sizes = deque(groups), dict[int, Finished](), list[int]()
        room = opts.max_batch or len(groups)
        while pending or batch.rows:
            while pending and batch.groups < room:
                batch.admit(pending.popleft())
            logits = self.forward(batch.queries(), batch.kv)
            sizes.append(batch.groups)
            finished = batch.apply(logits)
            if bool(finished.any()):
                done.update((f.index, f) for f in batch.retire(finished))
        results = tuple(
            Result(f.tokens, f.finish, f.forwards, f.decoded) for _, f in sorted(done.items())
        )
        return Generation(results, len(sizes), tuple(sizes), packed)


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
