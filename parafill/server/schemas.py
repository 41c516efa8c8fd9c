"""OpenAI's request and response bodies for chat.completions, completions and models (pydantic).

The HTTP boundary only: handlers turn requests into parafill's frozen dataclasses at once.
Unknown request fields are ignored (as vLLM does); known fields parafill cannot honour (n over
16, completions' logprobs, echo, tools, best_of > 1; top_logprobs without logprobs, as OpenAI) are
refused by `unsupported()` with a 400 naming them. Counts are strict ints (`true` is not 1), text
must be valid Unicode (no lone surrogates), stop strings non-empty: all 400s at validation.
Chat `logprobs: true` returns each chosen token's log-probability, and with `top_logprobs: k`
(<= 20) the k most likely tokens at each position.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator

from parafill.backends.base import Message
from parafill.fillers import check as check_filler

T = TypeVar("T")
Count = Annotated[int, Field(strict=True)]  # `true` is not 1, `2.0` is not 2


def _unicode(value: T) -> T:
    """JSON may carry lone UTF-16 surrogates (`"\\ud800"`); no tokenizer or reply can. Checks a
    string or the strings of a list."""
    for text in value if isinstance(value, list) else [value]:
        if isinstance(text, str):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                where = f"a lone surrogate at {exc.start}"
                raise ValueError(f"text is not valid Unicode ({where})") from None
    return value


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_In):
    type: Literal["text"]
    text: str  # checked by ChatMessage (here an error would read as the union's)


class ChatMessage(_In):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    @field_validator("content")
    @classmethod
    def _text(cls, content: str | list[TextPart]) -> str | list[TextPart]:
        _unicode(content if isinstance(content, str) else [p.text for p in content])
        return content

    def to_message(self) -> Message:
        text = (
            self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        )
        return Message("system" if self.role == "developer" else self.role, text)


class StreamOptions(_In):
    include_usage: bool = False


class JsonSchemaFormat(_In):
    name: str = "output"
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(_In):
    """OpenAI's `response_format`: free text, any JSON object, or JSON matching a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _has_schema(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type json_schema needs a json_schema object")
        return self


class _Sampled(_In):
    model: str
    max_tokens: Count | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: Count | None = None
    stop: str | list[str] | None = None
    n: Count = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: Any = None
    tools: Any = None
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    # vLLM's / HF's (not OpenAI's): divide the logits of tokens already in the prompt or
    # output by this (1: off)
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=10.0)
    # parafill's own: how the engine decodes this request ("autoregressive", "ngram",
    # "jacobi"); None: the server's --filler
    filler: str | None = None
    # parafill's own loop guard: stop once the output's last N tokens occurred earlier in
    # it (0: off)
    stop_on_repeat: int = Field(default=0, ge=0, le=4096)
    # parafill's own, LOSSY: keep a drafted token the model gives at least this probability
    # even where greedy decoding would choose another (0: off; greedy requests with a filler)
    lexical: float = Field(default=0.0, ge=0.0, lt=0.5)
    response_format: ResponseFormat | None = None

    _text = field_validator("model")(_unicode)

    @field_validator("filler")
    @classmethod
    def _filler(cls, filler: str | None) -> str | None:
        return None if filler is None else check_filler(filler)

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if stop == "" or (isinstance(stop, list) and "" in stop):
            raise ValueError("a stop string must have at least 1 character")
        return _unicode(stop)

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
    max_completion_tokens: Count | None = Field(default=None, ge=1)
    top_logprobs: Count | None = Field(default=None, ge=0, le=20)

    @property
    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampled):
    prompt: str | list[str] | list[StrictInt]
    max_tokens: Count | None = Field(default=16, ge=1)  # OpenAI's default for this endpoint
    echo: bool = False
    best_of: Count | None = None

    _prompt = field_validator("prompt")(_unicode)

    @property
    def limit(self) -> int | None:
        return self.max_tokens


MAX_N = 16  # choices per request


def unsupported(req: ChatRequest | CompletionRequest) -> tuple[str, str] | None:
    """(param, message) for a known OpenAI field whose value parafill cannot honour."""
    if not 1 <= req.n <= MAX_N:
        return "n", f"n={req.n} is not supported: 1 <= n <= {MAX_N}"
    if req.lexical and req.temperature > 0:
        return "lexical", "lexical acceptance is for greedy requests (temperature 0)"
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
        if not (key.isascii() and key.isdigit()):  # "²".isdigit(), and int("١٢") == 12
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
