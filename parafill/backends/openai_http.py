"""OpenAI-compatible HTTP backend: streams chat or text completions from one or more servers.

Requests go to the base URL with the fewest outstanding requests, under a concurrency cap per
URL. 429 / 5xx / connection failures are retried with jittered exponential backoff (honouring
Retry-After up to `retry_after_max` seconds) only while nothing has been yielded; a stream that
breaks later raises a retryable `BackendError` so the runner can redo the whole node. No
tokenizing or chat templating here.

A request ending in an assistant message (a node's answer prefix, e.g. SoT's "1.") is sent as
the server can take it (`assistant_prefix`): "continue" keeps it and asks the server to
continue that message (vLLM's and SGLang's `continue_final_message`); "drop" (the default, for
servers that would start a new turn after it, as llama-cpp-python's does) leaves it out and
strips the prefix from the answer when the model writes it itself, so prefix + answer reads
as one text either way.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import aclosing, asynccontextmanager
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
    FinishReason,
    Message,
    Request,
    render_messages,
)
from parafill.backends.openai_sse import ChunkParser, EndpointKind, ProtocolError, SSEDecoder

PrefixMode = Literal["drop", "continue"]
PromptRenderer = Callable[[Sequence[Message]], str]


def concat_prompt(messages: Sequence[Message]) -> str:
    """Default prompt for the completions endpoint: message contents, blank-line separated."""
    return "\n\n".join(m.content for m in messages)


@dataclass(frozen=True)
class OpenAIConfig:
    """Where and how to reach the servers. `timeout` bounds connecting and each wait for bytes
    (so a stream that keeps flowing never times out; whole-node deadlines belong to the runner).
    """

    base_urls: tuple[str, ...]
    model: str
    api_key: str | None = None
    endpoint: EndpointKind = "chat"
    max_concurrency: int = 8  # per base URL
    timeout: float = 60.0
    max_retries: int = 3
    backoff_base: float = 0.5
    backoff_cap: float = 8.0
    retry_after_max: float = 60.0  # a longer Retry-After is waited only this long
    prompt: PromptRenderer = concat_prompt  # completions endpoint only
    include_usage: bool = True  # ask for server token counts (stream_options)
    assistant_prefix: PrefixMode = "drop"  # chat: how a trailing assistant message is sent
    logprobs: bool = False  # chat: ask for each token's log p (vLLM, SGLang, llama.cpp have it)

    def __post_init__(self) -> None:
        if isinstance(self.base_urls, str) or not self.base_urls:
            raise ValueError("base_urls must be a non-empty tuple of URLs")
        if self.max_concurrency < 1 or self.max_retries < 0:
            raise ValueError("max_concurrency must be >= 1 and max_retries >= 0")
        if self.timeout <= 0 or not 0 <= self.backoff_base <= self.backoff_cap:
            raise ValueError("need timeout > 0 and 0 <= backoff_base <= backoff_cap")
        if not 0 <= self.retry_after_max < float("inf"):
            raise ValueError("retry_after_max must be a finite number of seconds >= 0")

    def url(self, base_url: str) -> str:
        """Full endpoint URL; `base_url` may or may not already end in /v1."""
        root = base_url.rstrip("/")
        if not root.endswith("/v1"):
            root += "/v1"
        return f"{root}/{'chat/completions' if self.endpoint == 'chat' else 'completions'}"


def encode_body(config: OpenAIConfig, request: Request) -> bytes:
    """The JSON body, byte-stable: model, then messages in order with fixed key order, then
    sampling. Requests sharing leading messages share a byte prefix (prefix caches hit)."""
    s = request.sampling
    body: dict[str, object] = {"model": config.model}
    if config.endpoint == "chat":
        msgs, prefix = _split_prefix(request.messages)
        if prefix and config.assistant_prefix == "continue":
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
    if config.logprobs and config.endpoint == "chat":
        # top_logprobs too, even 0: llama-cpp-python computes none without it
        body.update(logprobs=True, top_logprobs=s.top_logprobs)
    if s.stop:
        body["stop"] = list(s.stop)
    body["stream"] = True
    if config.include_usage:
        body["stream_options"] = {"include_usage": True}
    if config.endpoint == "chat" and prefix and config.assistant_prefix == "continue":
        body.update(continue_final_message=True, add_generation_prompt=False)
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.encode()


def _split_prefix(messages: Sequence[Message]) -> tuple[Sequence[Message], str]:
    """(messages without a trailing assistant message, that message's text or "")."""
    if messages and messages[-1].role == "assistant":
        return messages[:-1], messages[-1].content
    return messages, ""


async def _strip_prefix(chunks: AsyncIterator[Chunk], prefix: str) -> AsyncIterator[Chunk]:
    """Drop `prefix` from the start of the answer if the model wrote it (leading whitespace
    ignored); token counts are kept. Chunks are held back only until that is decided."""
    held: list[Chunk] = []
    deciding = bool(prefix.strip())
    async for chunk in chunks:
        if not deciding:
            yield chunk
            continue
        held.append(chunk)
        text = "".join(c.text for c in held).lstrip()
        if len(text) < len(prefix.strip()) and chunk.finish_reason is None:
            continue
        deciding = False
        if text.startswith(prefix.strip()):
            text = text[len(prefix.strip()) :]
        yield _merge(held, text, chunk.finish_reason)
    if deciding and held:  # the stream ended while deciding (no finish reason came)
        yield _merge(held, "".join(c.text for c in held), None)


def _merge(held: list[Chunk], text: str, finish: FinishReason | None) -> Chunk:
    """One chunk for `held` with `text`: token counts and log-probabilities are kept."""
    lps = [c.logprob for c in held]
    logprob = None if any(lp is None for lp in lps) else sum(lp for lp in lps if lp is not None)
    per_token = tuple(x for c in held for x in c.token_logprobs)
    return Chunk(text, sum(c.tokens for c in held), finish, logprob, (), per_token)


class _Retryable(Exception):
    """An attempt failed before yielding anything; another attempt may succeed."""

    def __init__(self, url: str, reason: str, retry_after: float | None = None) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason
        self.retry_after = retry_after


class _Endpoint:
    """One base URL: its concurrency cap and how many requests it has outstanding."""

    def __init__(self, url: str, max_concurrency: int) -> None:
        self.url = url
        self.limiter = anyio.CapacityLimiter(max_concurrency)
        self.outstanding = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        # Counted before waiting on the cap, so concurrent picks see each other at once.
        self.outstanding += 1
        borrower = object()  # one per attempt: a task may drive several streams at once
        try:
            await self.limiter.acquire_on_behalf_of(borrower)
            try:
                yield
            finally:
                self.limiter.release_on_behalf_of(borrower)
        finally:
            self.outstanding -= 1


def _retry_after(headers: httpx.Headers) -> float | None:
    try:
        seconds = float(headers.get("retry-after", ""))
    except ValueError:
        return None  # absent, or an HTTP date: fall back to backoff
    return seconds if seconds >= 0 else None


def _describe(exc: Exception, timeout: float) -> str:
    if isinstance(exc, ProtocolError):
        return f"bad stream: {exc}"
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__}: no bytes for {timeout:g}s)"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _check_status(response: httpx.Response, url: str) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    detail = (await response.aread())[:300].decode(errors="replace")
    if status in (408, 429) or status >= 500:
        raise _Retryable(url, f"HTTP {status}: {detail[:120]}", _retry_after(response.headers))
    raise BackendError(f"{url}: HTTP {status} (not retried): {detail}", retryable=False)


class _Backoff:
    """Delays between attempts; raises BackendError once the retries are spent. A server's
    Retry-After is honoured up to `retry_after_max` (a server asking for an hour, or for
    `inf`, must not stall the run); the give-up error says when it was cut."""

    def __init__(self, config: OpenAIConfig, rng: random.Random) -> None:
        self._config = config
        self._rng = rng
        self.failures = 0
        self.capped: float | None = None  # the largest Retry-After that was cut

    def delay(self, failure: _Retryable) -> float:
        self.failures += 1
        cfg = self._config
        if self.failures > cfg.max_retries:
            raise BackendError(
                f"{failure.url}: gave up after {self.failures} attempts; last: {failure.reason}"
                + self._note()
            ) from failure
        if failure.retry_after is not None:
            if failure.retry_after > cfg.retry_after_max:
                self.capped = max(self.capped or 0.0, failure.retry_after)
                return cfg.retry_after_max
            return failure.retry_after
        ceiling: float = min(cfg.backoff_cap, cfg.backoff_base * 2.0 ** (self.failures - 1))
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)  # "equal jitter"

    def _note(self) -> str:
        if self.capped is None:
            return ""
        cap = self._config.retry_after_max
        return f" (the server asked to wait {self.capped:g} s; waited {cap:g} s, retry_after_max)"


class OpenAIBackend:
    """`async with OpenAIBackend(config) as backend:` owns one pooled httpx.AsyncClient.

    Close a stream you stop reading early (`contextlib.aclosing`) or cancel its task: either
    closes the HTTP response, which tells the server to stop generating.
    """

    def __init__(self, config: OpenAIConfig, *, rng: random.Random | None = None) -> None:
        self._config = config
        self._rng = rng or random.Random()
        self._client: httpx.AsyncClient | None = None
        self._endpoints: list[_Endpoint] = []
        self._turn = 0
        self._headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if config.api_key:
            self._headers["Authorization"] = f"Bearer {config.api_key}"

    @property
    def capabilities(self) -> Capabilities:
        total = self._config.max_concurrency * len(self._config.base_urls)
        # Servers worth pointing this at (vLLM, llama.cpp, SGLang) batch concurrent requests
        # and reuse cached prefixes; encode_body keeps sibling prefixes byte-identical for them.
        return Capabilities(batched=True, shared_prefix=True, max_concurrency=total)

    @property
    def in_flight(self) -> int:
        """Requests holding or waiting for an endpoint slot right now."""
        return sum(e.outstanding for e in self._endpoints)

    async def __aenter__(self) -> OpenAIBackend:
        cfg = self._config
        self._endpoints = [_Endpoint(cfg.url(u), cfg.max_concurrency) for u in cfg.base_urls]
        total = cfg.max_concurrency * len(cfg.base_urls)
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(cfg.timeout),
            limits=httpx.Limits(max_connections=total, max_keepalive_connections=total),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _pick(self, avoid: _Endpoint | None) -> _Endpoint:
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
        if cfg.endpoint != "chat" or cfg.assistant_prefix == "continue" or not prefix:
            prefix = ""
        async with aclosing(self._stream_body(encode_body(cfg, request))) as raw:
            async for chunk in _strip_prefix(raw, prefix):
                yield chunk

    async def _stream_body(self, body: bytes) -> AsyncGenerator[Chunk, None]:
        backoff = _Backoff(self._config, self._rng)
        avoid: _Endpoint | None = None
        while True:
            endpoint = self._pick(avoid)
            try:
                async with endpoint.slot(), aclosing(self._attempt(endpoint.url, body)) as chunks:
                    async for chunk in chunks:
                        yield chunk
                return
            except _Retryable as failure:
                avoid = endpoint
                delay = backoff.delay(failure)
            await anyio.sleep(delay)

    async def _attempt(self, url: str, body: bytes) -> AsyncGenerator[Chunk, None]:
        """One HTTP request. Fails with _Retryable only if nothing was yielded yet."""
        assert self._client is not None
        parser = ChunkParser(self._config.endpoint)
        yielded = False
        try:
            async with self._client.stream("POST", url, content=body, headers=self._headers) as r:
                await _check_status(r, url)
                sse = SSEDecoder()
                # aiter_lines is an async generator; close it with the response, not at GC.
                lines = cast(AsyncGenerator[str, None], r.aiter_lines())
                async with aclosing(lines):
                    async for line in lines:
                        data = sse.feed(line)
                        chunk = parser.parse(data) if data is not None else None
                        if chunk is not None:
                            yielded = True
                            yield chunk
                        if parser.done:
                            break
                final = parser.final()
        except (httpx.TransportError, ProtocolError) as exc:
            reason = _describe(exc, self._config.timeout)
            if yielded:
                msg = f"{url}: stream broke after {parser.tokens} chunks: {reason}"
                raise BackendError(msg, retryable=True) from exc
            raise _Retryable(url, reason) from exc
        yield final
