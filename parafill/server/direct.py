"""The plain model: one prompt's continuation from LocalBackend, whole or as OpenAI chunks.

Chat and text completions differ only in the prompt (chat template or raw ids, decided by the
handler) and in the shape of a choice; both are a `Job` here. Token counts come from the
engine: prompt ids as submitted, completion tokens as summed from `Chunk.tokens`. With chat
`logprobs: true`, each chosen token's log-probability (from the engine) goes with its text, and
with `top_logprobs: k` the k most likely tokens at that position. `n > 1` submits n sequences
of the same prompt at once: the engine prefills the prompt once and decodes the n choices in the
same steps (a given seed is offset per choice).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Any, Literal

import anyio

from parafill.backends.base import Chunk, Sampling
from parafill.backends.local import LocalBackend
from parafill.constraints.spec import Constraint
from parafill.server.schemas import (
    AssistantMessage,
    ChatChoice,
    ChoiceLogprobs,
    ChunkChoice,
    Completion,
    Delta,
    ObjectKind,
    TextChoice,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from parafill.server.sse import Produce, Write, event

Kind = Literal["chat", "text"]


@dataclass(frozen=True)
class Job:
    kind: Kind
    model: str
    prompt: tuple[int, ...]
    sampling: Sampling
    include_usage: bool = False
    id: str = ""
    created: int = 0
    logprobs: bool = False  # chat: return each chosen token's log-probability
    n: int = 1  # choices: n sequences from one prompt (the engine prefills it once)
    filler: str | None = None  # how the engine decodes it (None: the backend's default)
    constraint: Constraint | None = None  # response_format, as an output constraint

    @staticmethod
    def new(
        kind: Kind,
        model: str,
        prompt: list[int],
        sampling: Sampling,
        usage: bool,
        logprobs: bool = False,
        n: int = 1,
    ) -> Job:
        prefix = "chatcmpl" if kind == "chat" else "cmpl"
        return Job(
            kind,
            model,
            tuple(prompt),
            sampling,
            usage,
            f"{prefix}-{secrets.token_hex(12)}",
            int(time.time()),
            logprobs,
            n,
        )

    def sampling_of(self, index: int) -> Sampling:
        """Choice `index`'s sampling: a given seed is offset per choice, so the n draws differ
        and each is reproducible."""
        s = self.sampling
        return s if s.seed is None or index == 0 else replace(s, seed=s.seed + index)

    def whole(
        self,
        text: str,
        finish: str | None,
        usage: Usage,
        logprobs: list[TokenLogprob] | None = None,
        more: Sequence[Answer] = (),
    ) -> Completion:
        """The whole response; `more` holds choices 1.. when n > 1."""
        answers = [Answer(text, finish, 0, logprobs), *more]
        choices: list[ChatChoice] | list[TextChoice]
        if self.kind == "chat":
            choices = [
                ChatChoice(
                    index=i,
                    message=AssistantMessage(content=a.text),
                    finish_reason=a.finish,
                    logprobs=ChoiceLogprobs(content=a.logprobs) if a.logprobs is not None else None,
                )
                for i, a in enumerate(answers)
            ]
        else:
            choices = [
                TextChoice(index=i, text=a.text, finish_reason=a.finish)
                for i, a in enumerate(answers)
            ]
        obj: ObjectKind = "chat.completion" if self.kind == "chat" else "text_completion"
        return Completion(
            id=self.id,
            object=obj,
            created=self.created,
            model=self.model,
            choices=choices,
            usage=usage,
        )

    def chunk(
        self,
        text: str | None,
        finish: str | None = None,
        *,
        first: bool = False,
        extra: dict[str, Any] | None = None,
        logprobs: list[TokenLogprob] | None = None,
        index: int = 0,
    ) -> str:
        """One SSE event carrying a text increment (and/or the finish reason) of choice
        `index`."""
        choices: list[ChunkChoice] | list[TextChoice]
        if self.kind == "chat":
            delta = Delta(role="assistant" if first else None, content=text)
            lp = ChoiceLogprobs(content=logprobs) if logprobs is not None else None
            choices = [ChunkChoice(index=index, delta=delta, finish_reason=finish, logprobs=lp)]
        else:
            choices = [TextChoice(index=index, text=text or "", finish_reason=finish)]
        obj: ObjectKind = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        body = Completion(
            id=self.id,
            object=obj,
            created=self.created,
            model=self.model,
            choices=choices,
            parafill=extra,
        )
        return event(body.model_dump_json(exclude_none=True))

    def usage_chunk(self, usage: Usage) -> str:
        """The last event when stream_options.include_usage: no choices, only usage."""
        obj: ObjectKind = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        body = Completion(
            id=self.id, object=obj, created=self.created, model=self.model, choices=[], usage=usage
        )
        return event(body.model_dump_json(exclude_none=True))


def _entries(backend: LocalBackend, c: Chunk) -> list[TokenLogprob]:
    """OpenAI's per-token entries for a chunk: the token's text, its log p, its UTF-8 bytes,
    and the most likely alternatives where top_logprobs asked for them."""
    out = []
    tops = c.token_top or ((),) * len(c.token_ids)
    for tid, lp, top in zip(c.token_ids, c.token_logprobs, tops, strict=True):
        text = _text(backend, tid)
        alts = [
            TopLogprob(token=t, logprob=v, bytes=list(t.encode("utf-8")))
            for t, v in ((_text(backend, i), v) for i, v in top)
        ]
        out.append(
            TokenLogprob(
                token=text, logprob=lp, bytes=list(text.encode("utf-8")), top_logprobs=alts
            )
        )
    return out


def _text(backend: LocalBackend, tid: int) -> str:
    return str(backend.tokenizer.decode([tid]))


@dataclass(frozen=True)
class Answer:
    """One choice, whole."""

    text: str
    finish: str | None
    tokens: int
    logprobs: list[TokenLogprob] | None


async def _answer(backend: LocalBackend, job: Job, index: int) -> Answer:
    parts: list[str] = []
    tokens, finish = 0, None
    entries: list[TokenLogprob] | None = [] if job.logprobs else None
    async with aclosing(
        backend.stream_ids(list(job.prompt), job.sampling_of(index), job.filler, job.constraint)
    ) as chunks:
        async for c in chunks:
            parts.append(c.text)
            tokens += c.tokens
            finish = c.finish_reason or finish
            if entries is not None:
                entries += _entries(backend, c)
    return Answer("".join(parts), finish, tokens, entries)


async def complete(backend: LocalBackend, job: Job) -> Completion:
    """The whole response; n > 1 choices decode together (they share the prompt's KV)."""
    answers: list[Answer | None] = [None] * job.n

    async def one(i: int) -> None:
        answers[i] = await _answer(backend, job, i)

    async with anyio.create_task_group() as tg:
        for i in range(job.n):
            tg.start_soon(one, i)
    done = [a for a in answers if a is not None]
    first, usage = done[0], Usage.of(len(job.prompt), sum(a.tokens for a in done))
    return job.whole(first.text, first.finish, usage, first.logprobs, done[1:])


def stream(backend: LocalBackend, job: Job) -> Produce:
    async def produce(write: Write) -> None:
        tokens = [0] * job.n
        lock = anyio.Lock()  # one event at a time on the wire

        async def send(text: str) -> None:
            async with lock:
                await write(text)

        async def one(i: int) -> None:
            pending: list[TokenLogprob] = []  # tokens whose text the detokenizer still holds
            sampling = job.sampling_of(i)
            async with aclosing(
                backend.stream_ids(list(job.prompt), sampling, job.filler, job.constraint)
            ) as chunks:
                async for c in chunks:
                    tokens[i] += c.tokens
                    if job.logprobs:
                        pending += _entries(backend, c)
                    if c.text or c.finish_reason:
                        lps = pending if job.logprobs else None
                        await send(job.chunk(c.text, c.finish_reason, logprobs=lps, index=i))
                        pending = []

        if job.kind == "chat":  # OpenAI opens each choice with the role
            for i in range(job.n):
                await write(job.chunk("", first=True, index=i))
        async with anyio.create_task_group() as tg:
            for i in range(job.n):
                tg.start_soon(one, i)
        if job.include_usage:
            await write(job.usage_chunk(Usage.of(len(job.prompt), sum(tokens))))

    return produce
