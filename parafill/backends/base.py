"""The Backend protocol: what the runner needs from anything that generates text.

A backend takes one `Request` (chat messages + sampling) and streams `Chunk`s. It does not
know about plans or nodes. Capability flags tell planners and the runner what it can do
(batch concurrent requests, share prefixes, pack branches into one sequence).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from parafill.backends.engine.params import Decoding

if TYPE_CHECKING:
    from parafill.constraints.spec import Constraint

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Message:
    role: Role
    content: str


@dataclass(frozen=True)
class Sampling(Decoding):
    """Per-request sampling (the `Decoding` fields; temperature 0 means greedy) and the stop
    strings that end a request's text."""

    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Request:
    messages: tuple[Message, ...]
    sampling: Sampling = field(default_factory=Sampling)
    # how the node decodes ("autoregressive", "ngram", "jacobi"); None: the backend's default.
    # Backends that do not speculate (remote servers) decode as they always do.
    filler: str | None = None
    # what the output must look like (parafill.constraints: JSON schema, regex, grammar, a
    # span of a text); None: free text. The local engine masks every token by it; a remote
    # server gets JSON schemas as `response_format`
    constraint: Constraint | None = None

    @staticmethod
    def chat(user: str, system: str | None = None, sampling: Sampling | None = None) -> Request:
        msgs = ((Message("system", system),) if system else ()) + (Message("user", user),)
        return Request(msgs, sampling or Sampling())


FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class FillStats:
    """How a request was decoded so far: forward passes that fed it, tokens drafted, drafts
    kept (tokens per forward = output tokens / passes)."""

    passes: int = 0
    drafted: int = 0
    accepted: int = 0


@dataclass(frozen=True)
class Chunk:
    """One streamed increment. The last chunk of a request has `finish_reason` set."""

    text: str
    tokens: int = 0
    finish_reason: FinishReason | None = None
    logprob: float | None = None  # summed log p of this chunk's tokens, where the backend has it
    token_ids: tuple[int, ...] = ()  # the tokens behind this chunk, where the backend has them
    token_logprobs: tuple[float, ...] = ()  # log p of each token (of `token_ids` where given)
    token_top: tuple[tuple[tuple[int, float], ...], ...] = ()  # per token: (id, log p), best first
    fill: FillStats | None = None  # the request's decoding so far (local engine)


@dataclass(frozen=True)
class Capabilities:
    batched: bool = False  # concurrent requests share forward passes
    shared_prefix: bool = False  # a common prompt prefix is prefilled once
    tree_packing: bool = False  # branches packed into one sequence with a tree mask
    max_concurrency: int = 8
    speculates: bool = False  # honours Request.filler (draft-and-verify inside a request)
    constrains: bool = False  # honours Request.constraint (masks every token by it)


@runtime_checkable
class Backend(Protocol):
    @property
    def capabilities(self) -> Capabilities: ...

    def stream(self, request: Request) -> AsyncIterator[Chunk]: ...


def applies(backend: Backend, constraint: Constraint) -> bool:
    """Whether `backend` enforces `constraint`: it constrains at all and, where it can apply only
    some kinds (a server's request fields), `applies_constraint` says it takes this one."""
    if not backend.capabilities.constrains:
        return False
    check = getattr(backend, "applies_constraint", None)
    return True if check is None else bool(check(constraint))


@runtime_checkable
class Metered(Protocol):
    """Optional: backends that count their forward passes (for run summaries)."""

    @property
    def forward_passes(self) -> int: ...


class BackendError(RuntimeError):
    """A backend could not serve a request (retryable unless `retryable` is False)."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


async def complete(backend: Backend, request: Request) -> tuple[str, int, FinishReason | None]:
    """Adapter: drain a stream into (text, tokens, finish_reason)."""
    parts: list[str] = []
    tokens = 0
    finish: FinishReason | None = None
    async for chunk in backend.stream(request):
        parts.append(chunk.text)
        tokens += chunk.tokens
        finish = chunk.finish_reason or finish
    return "".join(parts), tokens, finish


def render_messages(messages: Sequence[Message]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


def chat_ids(tokenizer: Any, messages: Sequence[Message]) -> list[int]:
    """Token ids of a chat through the tokenizer's chat template (a final assistant message
    is continued, not closed); "role: content" lines where the tokenizer has no template."""
    msgs = render_messages(messages)
    if getattr(tokenizer, "chat_template", None):
        cont = msgs[-1]["role"] == "assistant"  # continue a prefilled answer
        out: Any = tokenizer.apply_chat_template(
            msgs, add_generation_prompt=not cont, continue_final_message=cont
        )
        ids = out if isinstance(out, list) else out["input_ids"]  # BatchEncoding
        return [int(i) for i in ids]
    text = "".join(f"{m['role']}: {m['content']}\n" for m in msgs) + "assistant: "
    return list(tokenizer.encode(text))
