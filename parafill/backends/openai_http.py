"""OpenAI-compatible HTTP backend: streams chat or text completions from one or more servers.

Requests go to the base URL with the fewest outstanding requests, under a concurrency cap per
URL. 408 / 409 / 429 / 5xx / connection failures are retried with jittered exponential backoff
(honouring Retry-After, seconds or a date, up to `retry_after_max` seconds) only while nothing
has been yielded; a stream that breaks later raises a retryable `BackendError` so the runner
can redo the whole node. A stream is read no further than the request's max_tokens (a server
that ignores it is cut off there: finish_reason "length", the text kept).
Errors a retry cannot fix (other 4xx, context_length_exceeded, invalid_request_error, a 200 body
that is not a stream) are raised at once, not retryable. Each request has a total `deadline`.
No tokenizing or chat templating here.

A request ending in an assistant message (a node's answer prefix, e.g. SoT's "1.") is sent as
the server can take it (`assistant_prefix`): "continue" keeps it and asks the server to
continue that message (`continue_final_message`: llama.cpp's llama-server, vLLM); "drop" leaves
it out and strips the prefix from the answer when the model writes it itself (for servers that
would start a new turn after it, as llama-cpp-python's Python server does), so prefix + answer
reads as one text either way. "auto" (the default) asks each server once what it is
(`openai_probe`: GET /v1/models) and continues only where every server is known to.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, cast

import anyio

# httpx imports httpcore lazily when a client is made; in CI that import raced another
# thread's imports into CPython's import-lock KeyError, so it is imported here, eagerly.
import httpcore  # noqa: F401
import httpx

from parafill.backends.base import (
    BackendError,
    Capabilities,
    Chunk,
    Message,
    Request,
    render_messages,
)
from parafill.backends.openai_probe import Continuation, continuation, probe
from parafill.backends.openai_share import SlotShare
from parafill.backends.openai_slots import Clock, DeadlinePassed, Endpoint
from parafill.backends.openai_sse import (
    CONSTRAINT_MODES,
    RETRIED_4XX,
    Backoff,
    ChunkParser,
    ConstraintMode,
    EndpointKind,
    ProtocolError,
    RetryableFailure,
    ServerError,
    SSEDecoder,
    body_error,
    constraint_fields,
    error_is_final,
    retry_after,
    strip_prefix,
)
from parafill.constraints.spec import Constraint

PrefixMode = Literal["auto", "drop", "continue"]
PromptRenderer = Callable[[Sequence[Message]], str]


def concat_prompt(messages: Sequence[Message]) -> str:
    """Default prompt for the completions endpoint: message contents, blank-line separated."""
    return "\n\n".join(m.content for m in messages)


@dataclass(frozen=True)
class OpenAIConfig:
    """Where and how to reach the servers. `timeout` bounds connecting and each wait for bytes
    (a stream that keeps flowing, if only with keep-alive comments, never hits it); `deadline`
    bounds a whole request, retries and their waits included, from when its first attempt is
    sent (waiting for a slot under `max_concurrency` before that does not count); None: none.
    """

    base_urls: tuple[str, ...]
    model: str
    api_key: str | None = None
    endpoint: EndpointKind = "chat"
    max_concurrency: int = 8  # per base URL
    timeout: float = 60.0
    deadline: float | None = 600.0
    max_retries: int = 3
    backoff_base: float = 0.5
    backoff_cap: float = 8.0
    retry_after_max: float = 60.0  # a longer Retry-After is waited only this long
    prompt: PromptRenderer = concat_prompt  # completions endpoint only
    include_usage: bool = True  # ask for server token counts (stream_options)
    # chat: how a trailing assistant message is sent ("auto": as the servers are known to take it)
    assistant_prefix: PrefixMode = "auto"
    logprobs: bool = False  # chat: ask for each token's log p (vLLM, SGLang, llama.cpp have it)
    # how Request.constraint is sent (openai_sse.ConstraintMode): JSON schemas as
    # response_format always; regexes / grammars in the server's own fields when it is named
    constraints: ConstraintMode = "openai"
    # llama.cpp's llama-server only (one base URL, chat): requests sent together that share a
    # long prompt prefix have it prefilled once and loaded by each slot (openai_share.py)
    share_prefix: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.base_urls, str) or not self.base_urls:
            raise ValueError("base_urls must be a non-empty tuple of URLs")
        if self.max_concurrency < 1 or self.max_retries < 0:
            raise ValueError("max_concurrency must be >= 1 and max_retries >= 0")
        if self.timeout <= 0 or not 0 <= self.backoff_base <= self.backoff_cap:
            raise ValueError("need timeout > 0 and 0 <= backoff_base <= backoff_cap")
        if not 0 <= self.retry_after_max < float("inf"):
            raise ValueError("retry_after_max must be a finite number of seconds >= 0")
        if self.deadline is not None and not 0 < self.deadline < float("inf"):
            raise ValueError("deadline must be None or a finite number of seconds > 0")
        if self.constraints not in CONSTRAINT_MODES:
            raise ValueError(f"constraints must be one of {CONSTRAINT_MODES}")
        if self.assistant_prefix not in ("auto", "drop", "continue"):
            raise ValueError("assistant_prefix must be 'auto', 'drop' or 'continue'")

    def url(self, base_url: str) -> str:
        """Full endpoint URL; `base_url` may or may not already end in /v1."""
        root = base_url.rstrip("/")
        if not root.endswith("/v1"):
            root += "/v1"
        return f"{root}/{'chat/completions' if self.endpoint == 'chat' else 'completions'}"


def encode_body(
    config: OpenAIConfig,
    request: Request,
    prefix_mode: Continuation | None = None,
    slot: int | None = None,
) -> bytes:
    """The JSON body, byte-stable: model, then messages in order with fixed key order, then
    sampling. Requests sharing leading messages share a byte prefix (prefix caches hit). A
    trailing assistant message goes as `prefix_mode` says, else as the config does ("auto":
    dropped; the backend decides "auto" by asking the server first). `slot`: llama-server's
    `id_slot` (openai_share.py)."""
    s = request.sampling
    body: dict[str, object] = {"model": config.model}
    keep = (prefix_mode or config.assistant_prefix) == "continue"
    if config.endpoint == "chat":
        msgs, prefix = _split_prefix(request.messages)
        if prefix and keep:
            msgs = request.messages
        body["messages"] = render_messages(msgs)
    else:
        body["prompt"] = config.prompt(request.messages)
    body.update(max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p)
    if s.seed is not None:
        body["seed"] = s.seed
    if s.frequency_penalty:
        body["frequency_penalty"] = s.frequency_penalty
    if s.presence_penalty:
        body["presence_penalty"] = s.presence_penalty
    if s.logit_bias:
        body["logit_bias"] = {str(t): b for t, b in s.logit_bias}
    if s.repetition_penalty != 1.0:  # vLLM's / SGLang's / llama.cpp server's extra field
        body["repetition_penalty"] = s.repetition_penalty
    if config.logprobs and config.endpoint == "chat":
        # top_logprobs too, at least 1: llama-cpp-python computes none without the field and
        # llama-server none with 0 (the alternatives are not read)
        body.update(logprobs=True, top_logprobs=max(s.top_logprobs, 1))
    if s.stop:
        body["stop"] = list(s.stop)
    body.update(constraint_fields(request.constraint, config.constraints, config.endpoint))
    body["stream"] = True
    if config.include_usage:
        body["stream_options"] = {"include_usage": True}
    if config.endpoint == "chat" and prefix and keep:
        body.update(continue_final_message=True, add_generation_prompt=False)
    if slot is not None:
        body["id_slot"] = slot
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.encode()


def _split_prefix(messages: Sequence[Message]) -> tuple[Sequence[Message], str]:
    """(messages without a trailing assistant message, that message's text or "")."""
    if messages and messages[-1].role == "assistant":
        return messages[:-1], messages[-1].content
    return messages, ""


def _describe(exc: Exception, timeout: float) -> str:
    if isinstance(exc, ServerError):
        return str(exc)
    if isinstance(exc, ProtocolError):
        return f"bad stream: {exc}"
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__}: no bytes for {timeout:g}s)"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _failure(url: str, exc: Exception, chunks: int, timeout: float) -> Exception:
    """What a failed attempt raises: RetryableFailure before any chunk unless the error is final."""
    reason = _describe(exc, timeout)
    retryable = exc.retryable if isinstance(exc, ServerError) else True
    if chunks:
        return BackendError(
            f"{url}: stream broke after {chunks} chunks: {reason}", retryable=retryable
        )
    if not retryable:
        return BackendError(f"{url}: {reason} (not retried)", retryable=False)
    return RetryableFailure(url, reason)


async def _check_status(response: httpx.Response, url: str) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    raw = await response.aread()
    detail = raw[:300].decode(errors="replace")
    if (status in RETRIED_4XX or status >= 500) and not error_is_final(body_error(raw)):
        wait = retry_after(response.headers.get("retry-after"))
        raise RetryableFailure(url, f"HTTP {status}: {detail[:120]}", wait)
    raise BackendError(f"{url}: HTTP {status} (not retried): {detail}", retryable=False)


class OpenAIBackend:
    """`async with OpenAIBackend(config) as backend:` owns one pooled httpx.AsyncClient.

    Close a stream you stop reading early (`contextlib.aclosing`) or cancel its task: either
    closes the HTTP response, which tells the server to stop generating.
    """

    def __init__(self, config: OpenAIConfig, *, rng: random.Random | None = None) -> None:
        self._config = config
        self._rng = rng or random.Random()
        self._client: httpx.AsyncClient | None = None
        self._endpoints: list[Endpoint] = []
        self._turn = 0
        self._auth = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        self._headers.update(self._auth)
        self._continues: Continuation | None = None  # "auto" decided (None: not yet)
        self._probing = anyio.Lock()
        self._share: SlotShare | None = None

    @property
    def capabilities(self) -> Capabilities:
        total = self._config.max_concurrency * len(self._config.base_urls)
        # Servers worth pointing this at (vLLM, llama.cpp, SGLang) batch concurrent requests
        # and reuse cached prefixes; encode_body keeps sibling prefixes byte-identical for them.
        # Constraints: where regexes reach the server (as GBNF on llama.cpp); a kind the
        # server cannot take (applies_constraint) is dropped by the runner for that node only,
        # and the planners parse its free text.
        constrains = self._config.constraints in ("llama.cpp", "vllm", "vllm-guided")
        return Capabilities(True, True, max_concurrency=total, constrains=constrains)

    def applies_constraint(self, constraint: Constraint) -> bool:
        """Whether `constraint` can be written into this server's request (llama.cpp: JSON
        schemas, GBNF and regexes as GBNF; vLLM: all but spans); the runner sends the others'
        nodes unconstrained and the planners parse their free text."""
        try:
            constraint_fields(constraint, self._config.constraints, self._config.endpoint)
        except BackendError:
            return False
        return True

    @property
    def in_flight(self) -> int:
        """Requests holding or waiting for an endpoint slot right now."""
        return sum(e.outstanding for e in self._endpoints)

    async def __aenter__(self) -> OpenAIBackend:
        cfg = self._config
        self._endpoints = [Endpoint(cfg.url(u), cfg.max_concurrency) for u in cfg.base_urls]
        total = cfg.max_concurrency * len(cfg.base_urls)
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(cfg.timeout),
            limits=httpx.Limits(max_connections=total, max_keepalive_connections=total),
        )
        if cfg.share_prefix and len(cfg.base_urls) == 1 and cfg.endpoint == "chat":
            root = cfg.base_urls[0].rstrip("/").removesuffix("/v1")
            plain = {"Content-Type": "application/json", **self._auth}
            self._share = SlotShare(self._client, root, cfg.model, plain)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        client, self._client, self._share = self._client, None, None
        if client is not None:
            await client.aclose()

    def _pick(self, avoid: Endpoint | None) -> Endpoint:
        """Least outstanding; ties rotate, and a just-failed endpoint loses ties."""
        n = len(self._endpoints)
        self._turn += 1
        order = [self._endpoints[(self._turn + i) % n] for i in range(n)]
        return min(order, key=lambda e: (e.outstanding, e is avoid))

    async def stream(self, request: Request) -> AsyncGenerator[Chunk, None]:
        if self._client is None:
            raise RuntimeError("use `async with OpenAIBackend(config) as backend:` first")
        cfg = self._config
        _, prefix = _split_prefix(request.messages)
        mode = await self.prefix_mode() if prefix and cfg.endpoint == "chat" else "drop"
        slot = await self._share.slot(request.messages) if self._share else None
        body = encode_body(cfg, request, mode, slot)
        async with aclosing(self._stream_body(body, request.sampling.max_tokens)) as raw:
            async for chunk in strip_prefix(raw, prefix if mode == "drop" else ""):
                yield chunk

    async def prefix_mode(self) -> Continuation:
        """How a trailing assistant message is sent: as configured, or for "auto" as every
        server is known to take it, asked once per backend (`openai_probe`); "drop" while a
        server cannot be asked (asked again with the next such request)."""
        if self._config.assistant_prefix != "auto":
            return self._config.assistant_prefix
        async with self._probing:
            if self._continues is None and self._client is not None:
                wait = min(self._config.timeout, 10.0)
                urls = self._config.base_urls
                infos = [await probe(self._client, u, self._auth, wait) for u in urls]
                self._continues = continuation(infos)
        return self._continues or "drop"

    async def _stream_body(self, body: bytes, budget: int) -> AsyncGenerator[Chunk, None]:
        backoff = Backoff(self._config, self._rng)
        clock = Clock(self._config.deadline)
        avoid: Endpoint | None = None
        while True:
            endpoint = self._pick(avoid)
            try:
                attempt = aclosing(self._attempt(endpoint.url, body, clock, budget))
                async with endpoint.slot(clock), attempt as chunks:
                    async for chunk in chunks:
                        yield chunk
                return
            except RetryableFailure as failure:
                avoid = endpoint
                delay = backoff.delay(failure)
                if delay >= clock.left():
                    what = f"the next retry would start after it; last: {failure.reason}"
                    raise clock.error(endpoint.url, backoff.failures, what) from failure
            except DeadlinePassed as late:
                raise clock.error(endpoint.url, backoff.failures + 1, str(late)) from None
            await anyio.sleep(delay)

    async def _attempt(
        self, url: str, body: bytes, clock: Clock, budget: int
    ) -> AsyncGenerator[Chunk, None]:
        """One HTTP request. Fails with RetryableFailure only if nothing was yielded yet. Reads
        no further than `budget` tokens (max_tokens): a server that ignores it is cut off there
        and the node ends with "length", keeping what arrived."""
        assert self._client is not None
        parser, sse = ChunkParser(self._config.endpoint, budget), SSEDecoder()
        request = self._client.build_request("POST", url, content=body, headers=self._headers)
        try:
            with clock.bound("waiting for the response headers"):
                response = await self._client.send(request, stream=True)
            try:
                with clock.bound("reading an error response"):
                    await _check_status(response, url)
                # aiter_lines is an async generator; close it with the response, not at GC.
                lines = cast(AsyncGenerator[str, None], response.aiter_lines())
                async with aclosing(lines):
                    while True:
                        with clock.bound():
                            chunk = await _next_chunk(lines, sse, parser)
                        if chunk is None:
                            break
                        yield chunk
                        if parser.full:
                            break
                sse.check_end(response.headers.get("content-type"))
                final = parser.final()
            finally:
                await response.aclose()
        except (httpx.TransportError, ProtocolError) as exc:
            raise _failure(url, exc, parser.tokens, self._config.timeout) from exc
        except DeadlinePassed as late:
            what = str(late) or f"received {parser.tokens} chunks and {sse.comments} SSE comments"
            raise DeadlinePassed(what) from None
        yield final


async def _next_chunk(
    lines: AsyncIterator[str], sse: SSEDecoder, parser: ChunkParser
) -> Chunk | None:
    """Read lines until the next chunk; None at the end of the stream."""
    async for line in lines:
        data = sse.feed(line)
        chunk = parser.parse(data) if data is not None else None
        if chunk is not None:
            return chunk
        if parser.done or parser.full:  # full: usage alone said the budget is spent
            return None
    return None
