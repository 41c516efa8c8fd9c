"""`DiffusionBackend`: a masked-diffusion model behind parafill's `Backend` protocol, so the
planners can fill their nodes by Fast-dLLM style parallel unmasking.

Chat messages are tokenized with the tokenizer's chat template (as the local backend does).
One worker thread, started through anyio, drives a decoder `Session`: requests that arrive
while it decodes join the batch at its next step (up to `max_batch` rows; the rest wait), and
each row's text is delivered the step it finishes, as one final `Chunk`. Greedy only;
constraints are refused (the runner drops them for a backend whose capabilities say it
cannot apply them). A request the decoder would refuse (empty, too long, bad ids) fails alone,
before it reaches the batch.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

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
from parafill.backends.engine.limits import Limits
from parafill.backends.engine.params import repeats
from parafill.diffusion.decoder import DiffusionLM, Options, Result, Session, load

DEFAULT_CONTEXT = 4096  # where config.json states no context length
GATHER = 0.002  # seconds the idle worker waits for requests sent together with the first
_Out = Result | BackendError


class DiffusionBackend:
    """A `Backend` over a `DiffusionLM`. Use `DiffusionBackend.open(path)` (loads the model
    and its tokenizer and runs the worker), or construct it over a loaded model and enter
    `running()`."""

    def __init__(
        self,
        model: DiffusionLM,
        tokenizer: PreTrainedTokenizerBase,
        *,
        block: int | None = None,
        threshold: float = 0.9,
        cache: str = "dual",
        max_batch: int = 16,
        context: int | None = None,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        eos = set(model.spec.eos_ids)
        if tokenizer.eos_token_id is not None:
            eos.add(int(tokenizer.eos_token_id))
        opts = Options(block, threshold, None, cache, tuple(sorted(eos)), max_batch)
        self.session = Session(model, opts)  # raises ValueError for bad options
        self.max_batch = max_batch
        self.context = context or model.spec.context or DEFAULT_CONTEXT
        self._text_vocab = len(tokenizer)  # ids at or above it (head padding) have no text
        self._wake = threading.Condition()
        self._inbox: list[tuple[int, list[int], int]] = []
        self._cancels: list[int] = []
        self._stop = False
        self._streams: dict[int, MemoryObjectSendStream[_Out]] = {}
        self._keys = itertools.count()

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        path: str | Path,
        tokenizer: PreTrainedTokenizerBase | None = None,
        block: int | None = None,
        threshold: float = 0.9,
        cache: str = "dual",
        max_batch: int = 16,
        *,
        dtype: torch.dtype = torch.float32,
        device: str = "cpu",
    ) -> AsyncIterator[DiffusionBackend]:
        """Load the checkpoint in `path` (parafill.diffusion.load) and the tokenizer saved
        beside it (or use `tokenizer`), and serve requests until the block exits."""
        model = await anyio.to_thread.run_sync(partial(load, path, dtype, device))
        if tokenizer is None:
            from transformers import AutoTokenizer

            read = partial(AutoTokenizer.from_pretrained, str(path), local_files_only=True)
            tokenizer = await anyio.to_thread.run_sync(read)
        backend = cls(
            model, tokenizer, block=block, threshold=threshold, cache=cache, max_batch=max_batch
        )
        async with backend.running():
            yield backend

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Runs the decoding loop in a worker thread for the duration of the block."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(anyio.to_thread.run_sync, self._serve, abandon_on_cancel=False))
            try:
                yield
            finally:
                with self._wake:
                    self._stop = True
                    self._wake.notify()

    @property
    def capabilities(self) -> Capabilities:
        # concurrent requests share forward passes; no prefix sharing, no grammars, no drafts
        return Capabilities(
            batched=True,
            shared_prefix=False,
            tree_packing=False,
            max_concurrency=self.max_batch,
            speculates=False,
            constrains=False,
        )

    @property
    def limits(self) -> Limits:
        """Vocabulary and context of the model; caches grow with the batch (no fixed pool)."""
        return Limits(
            vocab=self.model.spec.vocab,
            max_positions=self.context,
            max_request_tokens=self.context,  # prompt + canvas, in whole blocks
            kv_rows=self.max_batch,
            kv_row_tokens=self.context,
            kv_bytes=None,
            max_seqs=self.max_batch,
            packs=True,  # rows share forward passes (prompts are not shared)
            speculates=False,
        )

    @property
    def forward_passes(self) -> int:
        return self.session.forwards

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        """Rows in each forward pass so far."""
        return tuple(self.session.batch_sizes)

    def encode(self, messages: Sequence[Message]) -> list[int]:
        """Token ids of a chat (the tokenizer's chat template; a final assistant message is
        continued, not closed)."""
        return chat_ids(self.tokenizer, messages)

    def stream(self, request: Request) -> AsyncIterator[Chunk]:
        if request.constraint is not None:
            raise BackendError(
                "diffusion decoding cannot apply output constraints (Request.constraint); "
                "send the request without one",
                retryable=False,
            )
        return self.stream_ids(self.encode(request.messages), request.sampling)

    async def stream_ids(self, ids: list[int], s: Sampling) -> AsyncGenerator[Chunk, None]:
        """Decode a continuation of raw token ids (no chat template) and yield its one Chunk."""
        self._check(ids, s)
        key = next(self._keys)
        send, recv = anyio.create_memory_object_stream[_Out](1)
        self._streams[key] = send
        with self._wake:
            self._inbox.append((key, list(ids), s.max_tokens))
            self._wake.notify()
        got = False
        try:
            async with recv, send:
                out = await recv.receive()
            got = True
            if isinstance(out, BackendError):
                raise out
            yield self._chunk(out, s)
        finally:
            self._streams.pop(key, None)
            if not got:  # cancelled or the consumer left: free the row
                with self._wake:
                    self._cancels.append(key)
                    self._wake.notify()

    def _check(self, ids: list[int], s: Sampling) -> None:
        if s.temperature > 0:
            raise BackendError(
                f"diffusion decoding is greedy only (temperature {s.temperature:g} asked; use 0)",
                retryable=False,
            )
        if s.adjusts:
            raise BackendError(
                "diffusion decoding applies no logit adjustments (frequency/presence/"
                "repetition penalties, logit_bias)",
                retryable=False,
            )
        if s.top_logprobs:
            raise BackendError("diffusion decoding reports no log-probabilities", retryable=False)
        try:
            self.session.check(ids, s.max_tokens, self.context)
        except ValueError as exc:
            raise BackendError(str(exc), retryable=False) from exc

    def _chunk(self, result: Result, s: Sampling) -> Chunk:
        tokens = list(result.tokens)
        finish: FinishReason = "stop" if result.finish == "eos" else "length"
        seen: set[tuple[int, ...]] = set()
        for i in range(len(tokens)):  # the loop guard, over the finished row
            if repeats(tokens[: i + 1], s.stop_on_repeat, seen):
                tokens, finish = tokens[: i + 1], "stop"
                break
        text = self._decode(tokens)
        stop = self._first_stop(text, s.stop)
        if stop is not None:
            # the shortest prefix of tokens whose text holds the stop string (what a
            # token-by-token decoder would have produced before stopping)
            lo, hi = 1, len(tokens)
            while lo < hi:
                mid = (lo + hi) // 2
                if self._first_stop(self._decode(tokens[:mid]), s.stop) is not None:
                    hi = mid
                else:
                    lo = mid + 1
            tokens, text, finish = tokens[:lo], text[:stop], "stop"
        fill = FillStats(passes=result.forwards, drafted=0, accepted=0)
        return Chunk(text, len(tokens), finish, token_ids=tuple(tokens), fill=fill)

    def _decode(self, tokens: list[int]) -> str:
        ids = [t for t in tokens if t < self._text_vocab]
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    @staticmethod
    def _first_stop(text: str, stops: Sequence[str]) -> int | None:
        """Where the text is cut: the earliest stop string (never in leading whitespace)."""
        lead = len(text) - len(text.lstrip())
        found = [i for i in (text.find(x, lead) for x in stops if x) if i >= 0]
        return min(found, default=None)

    def _serve(self) -> None:
        """The worker: admit what arrived, drop what was cancelled, run one step, deliver the
        rows that finished; sleep while there is nothing to do. Waking from sleep, it waits
        `GATHER` seconds so that requests sent together start in the same forward."""
        session = self.session
        while True:
            with self._wake:
                if not (self._stop or self._inbox or self._cancels or session.busy):
                    while not (self._stop or self._inbox or self._cancels):
                        self._wake.wait()
                    self._wake.wait(GATHER)
                if self._stop:
                    return
                outs = [out for item in self._inbox if (out := self._admit(*item)) is not None]
                for key in self._cancels:
                    session.cancel(key)
                self._inbox, self._cancels = [], []
            if session.busy:
                try:
                    outs.extend(session.step())
                except Exception as exc:  # noqa: BLE001 -- a failed forward fails its batch
                    error = BackendError(f"diffusion decoding failed: {exc!r}", retryable=False)
                    with self._wake:
                        for key in session.keys:
                            session.cancel(key)
                            outs.append((key, error))
            if outs:
                anyio.from_thread.run_sync(self._dispatch, outs)

    @property
    def idle(self) -> bool:
        """Nothing waiting, in flight or about to be admitted or cancelled."""
        with self._wake:
            return not (self._inbox or self._cancels or self.session.busy)

    def _admit(self, key: int, ids: list[int], max_tokens: int) -> tuple[int, _Out] | None:
        try:
            self.session.add(ids, max_tokens, key)
        except ValueError as exc:  # checked at submit already; never harms the batch
            return key, BackendError(str(exc), retryable=False)
        return None

    def _dispatch(self, outs: list[tuple[int, _Out]]) -> None:
        for key, out in outs:
            stream = self._streams.get(key)
            if stream is not None:
                stream.send_nowait(out)
