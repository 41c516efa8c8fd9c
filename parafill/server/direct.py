"""The plain model: one prompt's continuation from LocalBackend, whole or as OpenAI chunks.

Chat and text completions differ only in the prompt (chat template or raw ids, decided by the
handler) and in the shape of a choice; both are a `Job` here. Token counts come from the
engine: prompt ids as submitted, completion tokens as summed from `Chunk.tokens`. With chat
`logprobs: true`, each chosen token's log-probability (from the engine) goes with its text, and
with `top_logprobs: k` the k most likely tokens at that position.
"""

from __future__ import annotations

import secrets
import time
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Literal

from parafill.backends.base import Chunk, Sampling
from parafill.backends.local import LocalBackend
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

    @staticmethod
    def new(
        kind: Kind,
        model: str,
        prompt: list[int],
        sampling: Sampling,
        usage: bool,
        logprobs: bool = False,
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
        )

    def whole(
        self,
        text: str,
        finish: str | None,
        usage: Usage,
        logprobs: list[TokenLogprob] | None = None,
    ) -> Completion:
        choices: list[ChatChoice] | list[TextChoice]
        if self.kind == "chat":
            msg = AssistantMessage(content=text)
            lp = ChoiceLogprobs(content=logprobs) if logprobs is not None else None
            choices = [ChatChoice(message=msg, finish_reason=finish, logprobs=lp)]
        else:
            choices = [TextChoice(text=text, finish_reason=finish)]
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
    ) -> str:
        """One SSE event carrying a text increment (and/or the finish reason)."""
        choices: list[ChunkChoice] | list[TextChoice]
        if self.kind == "chat":
            delta = Delta(role="assistant" if first else None, content=text)
            lp = ChoiceLogprobs(content=logprobs) if logprobs is not None else None
            choices = [ChunkChoice(delta=delta, finish_reason=finish, logprobs=lp)]
        else:
            choices = [TextChoice(text=text or "", finish_reason=finish)]
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


async def complete(backend: LocalBackend, job: Job) -> Completion:
    parts: list[str] = []
    tokens, finish = 0, None
    entries: list[TokenLogprob] | None = [] if job.logprobs else None
    async with aclosing(backend.stream_ids(list(job.prompt), job.sampling)) as chunks:
        async for c in chunks:
            parts.append(c.text)
            tokens += c.tokens
            finish = c.finish_reason or finish
            if entries is not None:
                entries += _entries(backend, c)
    return job.whole("".join(parts), finish, Usage.of(len(job.prompt), tokens), entries)


def stream(backend: LocalBackend, job: Job) -> Produce:
    async def produce(write: Write) -> None:
        if job.kind == "chat":
            await write(job.chunk("", first=True))  # OpenAI opens with the role
        tokens = 0
        pending: list[TokenLogprob] = []  # tokens whose text the detokenizer still holds
        async with aclosing(backend.stream_ids(list(job.prompt), job.sampling)) as chunks:
            async for c in chunks:
                tokens += c.tokens
                if job.logprobs:
                    pending += _entries(backend, c)
                if c.text or c.finish_reason:
                    lps = pending if job.logprobs else None
                    await write(job.chunk(c.text, c.finish_reason, logprobs=lps))
                    pending = []
        if job.include_usage:
            await write(job.usage_chunk(Usage.of(len(job.prompt), tokens)))

    return produce
