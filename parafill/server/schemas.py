"""OpenAI's request and response bodies for chat.completions, completions and models (pydantic).

The HTTP boundary only: handlers turn requests into parafill's frozen dataclasses at once.
Unknown request fields are ignored (as vLLM does); known fields parafill cannot honour (n over
16, completions' logprobs, echo, tools, best_of > 1; top_logprobs without logprobs, as OpenAI) are
refused by `unsupported()` with a 400 naming them. Chat `logprobs: true` returns each chosen
token's log-probability, and with `top_logprobs: k` (<= 20) the k most likely tokens at each
position.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from parafill.backends.base import Message


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_In):
    type: Literal["text"]
    text: str


class ChatMessage(_In):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def to_message(self) -> Message:
        text = (
            self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        )
        return Message("system" if self.role == "developer" else self.role, text)


class StreamOptions(_In):
    include_usage: bool = False


class _Sampled(_In):
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: Any = None
    tools: Any = None
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None

    @property
    def bias(self) -> tuple[tuple[int, float], ...]:
        """logit_bias as (token id, bias); validated by `unsupported` first."""
        return tuple((int(k), float(v)) for k, v in (self.logit_bias or {}).items())

    @property
    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ChatRequest(_Sampled):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = Field(default=None, ge=1)
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    @property
    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampled):
    prompt: str | list[str] | list[int]
    max_tokens: int | None = Field(default=16, ge=1)  # OpenAI's default for this endpoint
    echo: bool = False
    best_of: int | None = None

    @property
    def limit(self) -> int | None:
        return self.max_tokens


MAX_N = 16  # choices per request


def unsupported(req: ChatRequest | CompletionRequest) -> tuple[str, str] | None:
    """(param, message) for a known OpenAI field whose value parafill cannot honour."""
    if not 1 <= req.n <= MAX_N:
        return "n", f"n={req.n} is not supported: 1 <= n <= {MAX_N}"
    if isinstance(req, ChatRequest):
        if req.logprobs not in (None, False, True):
            return "logprobs", "logprobs must be true or false"
        if req.top_logprobs and req.logprobs is not True:
            return "top_logprobs", "top_logprobs needs logprobs=true"
    elif req.logprobs is not None:
        return "logprobs", "logprobs are not supported on /v1/completions (use chat)"
    if req.tools:
        return "tools", "tools / function calling are not supported"
    for key, value in (req.logit_bias or {}).items():
        if not key.isdigit():
            return "logit_bias", f"logit_bias keys are token ids, not {key!r}"
        if not -100 <= value <= 100:
            return "logit_bias", f"logit_bias values lie in -100..100, not {value}"
    if isinstance(req, CompletionRequest):
        if req.echo:
            return "echo", "echo is not supported"
        if req.best_of not in (None, 1):
            return "best_of", "best_of > 1 is not supported"
    return None


# ---- responses ------------------------------------------------------------------------------


ObjectKind = Literal["chat.completion", "chat.completion.chunk", "text_completion"]


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Usage(_Out):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @staticmethod
    def of(prompt: int, completion: int) -> Usage:
        return Usage(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        )


class AssistantMessage(_Out):
    role: Literal["assistant"] = "assistant"
    content: str


class TopLogprob(_Out):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(_Out):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(_Out):
    content: list[TokenLogprob] | None


class ChatChoice(_Out):
    index: int = 0
    message: AssistantMessage
    finish_reason: str | None
    logprobs: ChoiceLogprobs | None = None


class Delta(_Out):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(_Out):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None


class TextChoice(_Out):
    index: int = 0
    text: str
    finish_reason: str | None = None


class Completion(_Out):
    """A whole response or one streamed chunk; `object` says which endpoint and kind."""

    id: str
    object: ObjectKind
    created: int
    model: str
    choices: list[ChatChoice] | list[ChunkChoice] | list[TextChoice]
    usage: Usage | None = None
    parafill: dict[str, Any] | None = None  # pipeline models: skeleton, points, node timings


class ModelCard(_Out):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "parafill"


class ModelList(_Out):
    object: Literal["list"] = "list"
    data: list[ModelCard]
