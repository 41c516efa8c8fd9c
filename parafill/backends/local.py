"""The local backend: parafill's engine behind the async Backend protocol.

Chat templates, tokenizing, incremental detokenizing and stop strings live here; the engine
(token ids only) runs in its own worker thread started through anyio, and hands each step's
tokens to the event loop in one call that does not wait for the loop (handoff.py), so the next
step computes while the loop streams the last one. Cancelling a stream frees its room in the
engine.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import anyio
import torch
from anyio.streams.memory import MemoryObjectSendStream
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from parafill.backends.base import (
    BackendError,
    Capabilities,
    Chunk,
    FillStats,
    FinishReason,
    Message,
    Request,
    Sampling,
    chat_ids,
)
from parafill.backends.detok import Detokenizer
from parafill.backends.engine import kernels
from parafill.backends.engine.engine import Engine, EngineConfig, StepOutput
from parafill.backends.engine.fallback import FallbackEngine, build_engine
from parafill.backends.engine.kv import BudgetError
from parafill.backends.engine.limits import Limits
from parafill.backends.engine.model import ATTENTION, supports
from parafill.backends.engine.quant import check_format
from parafill.backends.engine.sampling import GenParams
from parafill.backends.engine.weights import ModelNotFound, default_gguf, load
from parafill.backends.handoff import poster
from parafill.fillers import FillerError, check, make

if TYPE_CHECKING:
    from parafill.constraints import Compiled, Constraint, TokenizerInfo


@dataclass(frozen=True)
class LocalConfig(EngineConfig):
    """The engine's settings (every `EngineConfig` field: mode, budget_tokens / budget_bytes,
    rows, prefill_chunk, max_seqs, decode, compile, retain, speculate) plus what loading the
    model needs."""

    model: str | None = None  # None: the embedded SmolLM2-135M-Instruct
    device: str = "auto"
    max_positions: int = 4096
    adapter: str | None = None  # a LoRA adapter directory, merged into the weights at load
    filler: str = "autoregressive"  # for requests that name none (Request.filler None)
    # the projections' weight format on the CPU: "fp32" | "bf16" | "int8" | "int4" (quant.py);
    # "auto": int4 for every model on the CPU where parafill's kernels are built (a GGUF's own
    # blocks kept, its wider tensors at 8 bits; other weights quantized on load): the fastest
    # format, token-exact in every mode with ordered attention; without the kernels, int4 for
    # the embedded model only (fp64 attention); fp32 with an adapter (the NER adapter lost its
    # training entities at 4 bits) and elsewhere (GPUs: the model's dtype)
    weights: str = "auto"
    # a second, smaller model (HF directory or .gguf) with the same tokenizer, for the `draft`
    # filler; loaded in the same device, dtype and weight format
    draft_model: str | None = None
    # the CPU step's intra-op threads (EngineConfig.threads): tuned to the cores free now
    threads: int | Literal["auto"] | None = "auto"

    def engine(self) -> EngineConfig:
        return EngineConfig(**{f.name: getattr(self, f.name) for f in fields(EngineConfig)})


CALIBRATION = (
    Message("user", "Explain how a city water system works, from the reservoir to the tap."),
    Message(
        "assistant",
        "A city water system moves water through several stages before it reaches your tap.\n\n"
        "1. **Source**: Water is collected from a reservoir, a river or wells. Reservoirs store "
        "rain and snowmelt behind a dam, so the supply stays steady in dry months.\n"
        "2. **Treatment**: At the treatment plant, the water is screened to remove leaves and "
        "debris. Chemicals are added so that small particles clump together and settle to the "
        "bottom. The water then passes through filters of sand and gravel, and it is "
        "disinfected with chlorine or ultraviolet light to kill bacteria and viruses.\n"
        "3. **Storage**: Clean water is pumped into storage tanks and water towers. Because "
        "the towers are high, gravity gives the water enough pressure to flow through the "
        "pipes.\n"
        "4. **Distribution**: A network of large mains and smaller pipes carries the water "
        "under the streets to homes, schools and businesses. Valves and pumps keep the "
        "pressure even, and workers test the water regularly to make sure it is safe.\n\n"
        "In short, the system collects, cleans, stores and delivers water, and it is checked "
        "at every stage so that it is safe to drink.",
    ),
)  # what the `self` filler's layer calibration reads (selfspec.py): a typical chat answer


class LocalBackend:
    def __init__(
        self,
        engine: Engine | FallbackEngine,
        tokenizer: PreTrainedTokenizerBase,
        filler: str = "autoregressive",
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.filler = filler  # for requests that name none
        self._streams: dict[int, MemoryObjectSendStream[StepOutput]] = {}
        self._info: TokenizerInfo | None = None  # the grammar library's view of the tokenizer
        self._warming: Future[TokenizerInfo] | None = None  # ... being built by `open`
        eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
        self._eos = frozenset(int(e) for e in eos)

    @classmethod
    @asynccontextmanager
    async def open(
        cls, config: LocalConfig | None = None, on_convert: Callable[[str], None] | None = None
    ) -> AsyncIterator[LocalBackend]:
        cfg = config or LocalConfig()
        filler = check(cfg.filler)  # before the model loads
        if cfg.weights != "auto":
            check_format(cfg.weights)
        if cfg.attention not in ATTENTION:
            raise ValueError(
                f"attention must be one of {', '.join(ATTENTION)}, not {cfg.attention!r}"
            )
        device = cfg.device if cfg.device != "auto" else _auto_device()
        fmt = weights_for(cfg, device)
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        loader = partial(load, cfg.model, device, dtype, on_convert, cfg.adapter)
        hf, tok = await anyio.to_thread.run_sync(loader)
        draft = None
        if cfg.draft_model is not None:
            load_draft = partial(load, cfg.draft_model, device, dtype, on_convert)
            draft_hf, draft_tok = await anyio.to_thread.run_sync(load_draft)
            if draft_tok.get_vocab() != tok.get_vocab():
                raise ValueError(
                    f"the draft model {cfg.draft_model!r} has another tokenizer than the "
                    "target: a drafter must share the target's vocabulary"
                )
            draft = (draft_hf, _gguf_source(cfg.draft_model))
        notify = on_convert or (lambda _msg: None)
        if cfg.weights == "auto" and not supports(hf):
            fmt = "fp32"  # the HF fallback takes its own weights only
        gguf = _gguf_source(cfg.model)
        build = partial(build_engine, hf, cfg.engine(), cfg.max_positions, notify, fmt, gguf, draft)
        # the grammar library's tokenizer view (~0.6 s) is built while the engine is
        warming = _warm_tokenizer(tok, int(hf.config.vocab_size))
        backend = cls(await anyio.to_thread.run_sync(build), tok, filler)
        backend._warming = warming
        if isinstance(backend.engine, Engine):  # the text the `self` drafter calibrates on
            backend.engine.calibration = backend.encode(CALIBRATION)
        async with backend.running():
            yield backend

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Runs the engine loop in a worker thread for the duration of the block."""
        stop = threading.Event()
        post = poster()
        serve = partial(self.engine.serve, partial(post, self._dispatch), stop)
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(anyio.to_thread.run_sync, serve, abandon_on_cancel=False))
            try:
                yield
            finally:
                stop.set()
                self.engine.wake()

    @property
    def limits(self) -> Limits:
        """What the engine can hold (vocabulary, context per request, KV cache) and do."""
        return self.engine.limits

    @property
    def capabilities(self) -> Capabilities:
        lim = self.limits
        tree = lim.packs and self.engine.config.mode == "tree"
        constrains = isinstance(self.engine, Engine)  # HF's fallback engine masks nothing
        return Capabilities(lim.packs, lim.packs, tree, lim.max_seqs, lim.speculates, constrains)

    @property
    def forward_passes(self) -> int:
        return self.engine.steps

    def encode(self, messages: Sequence[Message]) -> list[int]:
        """Token ids of a chat (the tokenizer's chat template; a final assistant message is
        continued, not closed)."""
        return chat_ids(self.tokenizer, messages)

    def stream(self, request: Request) -> AsyncIterator[Chunk]:
        ids = self.encode(request.messages)
        return self.stream_ids(ids, request.sampling, request.filler, request.constraint)

    def compile(self, constraint: Constraint) -> Compiled:
        """The constraint compiled for this model's tokenizer and logits (cached); raises
        ConstraintError with the grammar library's reason."""
        from parafill.constraints import compile as compile_constraint
        from parafill.constraints import tokenizer_info

        if self._info is None and self._warming is not None:
            warming, self._warming = self._warming, None
            with contextlib.suppress(Exception):  # built again below, its error raised there
                info = warming.result()
                if info.n_vocab == self.limits.vocab and set(info.eos_ids) == self._eos:
                    self._info = info
        if self._info is None:
            self._info = tokenizer_info(self.tokenizer, self.limits.vocab, sorted(self._eos))
        return compile_constraint(constraint, self._info)

    async def stream_ids(
        self,
        ids: list[int],
        s: Sampling,
        filler: str | None = None,
        constraint: Constraint | None = None,
    ) -> AsyncGenerator[Chunk, None]:
        """Stream a continuation of raw token ids (no chat template: completions endpoints).
        `filler` names how to decode (None: the backend's default); the HF fallback engine
        decodes one token per step whatever it names. `constraint` masks every token."""
        params = GenParams.of(s, self._eos)
        send, recv = anyio.create_memory_object_stream[StepOutput](math.inf)
        try:
            compiled = self.compile(constraint) if constraint is not None else None
            proposer = make(filler or self.filler)
            if compiled is not None:
                if not isinstance(self.engine, Engine):
                    raise ValueError("output constraints need the compact engine (not HF's)")
                seq_id = self.engine.submit(ids, params, proposer, compiled)
            else:
                seq_id = self.engine.submit(ids, params, proposer)
        except (BudgetError, FillerError, ValueError) as exc:  # ConstraintError included
            raise BackendError(str(exc), retryable=False) from exc
        self._streams[seq_id] = send
        try:
            async with recv, send:
                async for chunk in _chunks(recv, Detokenizer(self.tokenizer, s.stop)):
                    yield chunk
                    if chunk.finish_reason is not None:
                        return
        finally:
            self._streams.pop(seq_id, None)
            # a stop string, a consumer that left, or cancellation: free the engine's room
            # (a no-op when the engine already retired the sequence)
            self.engine.cancel(seq_id)

    def _dispatch(self, outs: list[StepOutput]) -> None:
        # run on the event loop, posted by the engine thread with a whole step's outputs
        for out in outs:
            stream = self._streams.get(out.seq_id)
            if stream is not None:
                stream.send_nowait(out)


async def _chunks(recv: AsyncIterator[StepOutput], detok: Detokenizer) -> AsyncIterator[Chunk]:
    async for out in recv:
        if out.error or out.finish == "error":
            raise BackendError(f"engine error: {out.error}", retryable=False)
        if out.finish == "cancelled":
            raise BackendError("request was cancelled in the engine", retryable=False)
        text, stopped = detok.add(out.tokens, final=out.finish is not None)
        n, lp, ids, lps = len(out.tokens), sum(out.logprobs), out.tokens, out.logprobs
        fill = FillStats(out.passes, out.drafted, out.accepted)
        if stopped:
            yield Chunk(text, n, "stop", lp, ids, lps, out.top, fill)
            return
        if out.finish is not None:
            finish: FinishReason = "length" if out.finish == "length" else "stop"
            yield Chunk(text, n, finish, lp, ids, lps, out.top, fill)
            return
        yield Chunk(text, n, None, lp, ids, lps, out.top, fill)


def _warm_tokenizer(tok: PreTrainedTokenizerBase, vocab: int) -> Future[TokenizerInfo] | None:
    """Start building `tokenizer_info` for `tok` in a thread (None: the tokenizer has no eos)."""
    from parafill.constraints import tokenizer_info

    if tok.eos_token_id is None:
        return None
    pool = ThreadPoolExecutor(1, "parafill-tokenizer-info")
    future = pool.submit(tokenizer_info, tok, vocab, [int(tok.eos_token_id)])
    pool.shutdown(wait=False)
    return future


def weights_for(cfg: LocalConfig, device: str) -> str:
    """`cfg.weights`, with "auto" resolved for `device` (see LocalConfig.weights)."""
    if cfg.weights != "auto":
        return cfg.weights
    if device.split(":")[0] != "cpu" or cfg.adapter is not None:
        return "fp32"  # a LoRA adapter's small deltas do not survive 4-bit rounding (NER's)
    if kernels.available():  # any model a user brings, packed (a GGUF's own blocks kept)
        return "int4"
    return "int4" if cfg.model is None else "fp32"


def _auto_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _gguf_source(model: str | None) -> Path | None:
    """The GGUF file a model was converted from (its own 4-bit blocks feed int4 weights)."""
    if model is None:
        try:
            return default_gguf()
        except ModelNotFound:
            return None
    path = Path(model)
    return path if path.suffix == ".gguf" and path.is_file() else None
