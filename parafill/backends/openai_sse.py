"""The pure side of the OpenAI backend: server-sent events into event payloads (`SSEDecoder`),
payloads into `Chunk`s (`ChunkParser`: text, per-token log-probabilities, usage, finish reason),
taking a node's answer prefix off the chunks (`strip_prefix`), the retry policy: which server
errors a retry cannot fix (`error_is_final`) and the delays between attempts (`Backoff`), and
how an output constraint is written into a request body (`constraint_fields`). No I/O; the
HTTP side lives in `openai_http`. Errors quote what a server sent as a bounded excerpt.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Literal, NoReturn

from parafill.backends.base import BackendError, Chunk, FinishReason
from parafill.constraints.gbnf import regex_to_gbnf
from parafill.constraints.spec import ConstraintError

if TYPE_CHECKING:
    from parafill.backends.openai_http import OpenAIConfig
    from parafill.constraints.spec import Constraint

EndpointKind = Literal["chat", "completions"]
# which request fields carry an output constraint (OpenAIConfig.constraints): OpenAI's
# response_format only; llama.cpp's server (response_format json_object + schema, GBNF
# `grammar`, regexes converted to GBNF); vLLM >= 0.10.2 (`structured_outputs`); vLLM < 0.12
# (`guided_*`); SGLang
ConstraintMode = Literal["openai", "llama.cpp", "vllm", "vllm-guided", "sglang"]
CONSTRAINT_MODES: tuple[ConstraintMode, ...] = (
    "openai", "llama.cpp", "vllm", "vllm-guided", "sglang"
)  # fmt: skip
# per mode: the body field a regex / a grammar goes in (a tuple: nested under its first name)
_REGEX: dict[str, str | tuple[str, str]] = {
    "vllm": ("structured_outputs", "regex"), "vllm-guided": "guided_regex", "sglang": "regex"
}  # fmt: skip
_GRAMMAR: dict[str, str | tuple[str, str]] = {
    "llama.cpp": "grammar", "vllm": ("structured_outputs", "grammar"),
    "vllm-guided": "guided_grammar", "sglang": "ebnf",
}  # fmt: skip

EXCERPT = 200  # characters of what a server sent that an error message quotes
# error codes / types that say the request itself is wrong, so sending it again cannot help
# (exceed_context_size_error is llama.cpp's name for context_length_exceeded)
FINAL_ERRORS = frozenset(
    {"context_length_exceeded", "invalid_request_error", "exceed_context_size_error"}
)
RETRIED_4XX = frozenset({408, 409, 429})  # timeout, conflict, rate limit: may pass
_FIELDS = frozenset({"data", "event", "id", "retry"})


class ProtocolError(Exception):
    """The server's stream was not what the OpenAI API promises."""


class ServerError(ProtocolError):
    """The server answered 200 but with an error: an error event, or a body that is not a
    stream. `retryable` is False when sending the request again cannot help."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def excerpt(text: str, total: int | None = None) -> str:
    """`text` quoted, cut to EXCERPT characters; says how long it was when cut."""
    total = len(text) if total is None else total
    if total <= EXCERPT:
        return repr(text)
    return f"{text[:EXCERPT]!r}... ({total} characters)"


def status_is_final(status: int) -> bool:
    """A 4xx other than 408 / 409 / 429: the request is wrong, not the moment."""
    return 400 <= status < 500 and status not in RETRIED_4XX


def error_is_final(error: object) -> bool:
    """Whether an OpenAI-style error object (`{"message", "type", "code"}`) says that sending
    the request again cannot help: a known code or type, or an HTTP-like code that is final."""
    if not isinstance(error, dict):
        return False
    code, kind = error.get("code"), error.get("type")
    if any(isinstance(x, str) and x in FINAL_ERRORS for x in (code, kind)):
        return True
    if isinstance(code, str) and code.isdigit():
        code = int(code)
    return isinstance(code, int) and not isinstance(code, bool) and status_is_final(code)


def body_error(body: bytes) -> object:
    """The `error` object of a JSON error body (None if it is not one)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    return parsed.get("error") if isinstance(parsed, dict) else None


class RetryableFailure(Exception):
    """An attempt failed before yielding anything; another attempt may succeed."""

    def __init__(self, url: str, reason: str, retry_after: float | None = None) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason
        self.retry_after = retry_after


def retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """A Retry-After header's seconds: its delay-seconds, or the time from `now` (default: the
    clock) until its HTTP date, 0 for a date already past. None if absent or unreadable: the
    caller falls back to backoff."""
    try:
        seconds = float(value or "")
    except ValueError:
        return _until(value, now or datetime.now(timezone.utc)) if value else None
    return seconds if seconds >= 0 else None


def _until(date: str, now: datetime) -> float | None:
    """Seconds from `now` until an HTTP date (any of RFC 9110's three forms); None if it is
    not one. A date without a zone (asctime) is GMT, as the RFC says."""
    try:
        when = parsedate_to_datetime(date)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - now).total_seconds())


class Backoff:
    """Delays between attempts; raises BackendError once the retries are spent. A server's
    Retry-After is honoured up to `retry_after_max` (a server asking for an hour, or for
    `inf`, must not stall the run); the give-up error says when it was cut."""

    def __init__(self, config: OpenAIConfig, rng: random.Random) -> None:
        self._config = config
        self._rng = rng
        self.failures = 0
        self.capped: float | None = None  # the largest Retry-After that was cut

    def delay(self, failure: RetryableFailure) -> float:
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


class SSEDecoder:
    """Server-sent events, fed line by line; returns each complete event's data. Counts events
    and comments (keep-alives), and keeps the start of any text that is not SSE."""

    def __init__(self) -> None:
        self._data: list[str] = []
        self.events = 0
        self.comments = 0
        self._other: list[str] = []  # lines that are not SSE, up to about EXCERPT characters
        self._other_chars = 0

    def feed(self, line: str) -> str | None:
        if not line:  # a blank line ends the event
            data, self._data = self._data, []
            self.events += bool(data)
            return "\n".join(data) if data else None
        name, colon, value = line.partition(":")
        if name == "data":  # comments (":...") and other fields are ignored
            self._data.append(value[1:] if value.startswith(" ") else value)
        elif not name and colon:
            self.comments += 1
        elif name not in _FIELDS:
            if self._other_chars < EXCERPT:
                self._other.append(line)
            self._other_chars += len(line) + 1
        return None

    def check_end(self, content_type: str | None) -> None:
        """At the end of a body: one with text but not a single event is not an SSE stream."""
        if self.events or not self._other_chars:
            return
        quoted = excerpt("\n".join(self._other), self._other_chars - 1)
        kind = f"Content-Type {content_type}" if content_type else "no Content-Type"
        raise ServerError(f"not an SSE stream ({kind}); received {quoted}", retryable=False)


class ChunkParser:
    """Turns event payloads into Chunks: one token per text chunk unless usage says more.
    `budget` (the request's max_tokens): `full` once that many tokens have arrived, so a
    server that ignores max_tokens can be cut off there; `final` then says "length"."""

    def __init__(self, kind: EndpointKind, budget: int | None = None) -> None:
        self._kind = kind
        self._budget = budget
        self.tokens = 0
        self.usage: int | None = None
        self.finish: FinishReason | None = None
        self.done = False

    @property
    def full(self) -> bool:
        """The budget is spent: by the server's own count where it sends one as it goes
        (vLLM's continuous usage), else by the chunks (a text chunk is at least one token)."""
        spent = max(self.tokens, self.usage or 0)
        return self._budget is not None and spent >= self._budget

    def parse(self, data: str) -> Chunk | None:
        if data.strip() == "[DONE]":
            self.done = True
            return None
        try:
            event = json.loads(data)
        except ValueError as exc:
            raise ProtocolError(f"event data is not JSON: {excerpt(data)}") from exc
        if not isinstance(event, dict):
            raise ProtocolError(f"event data is not a JSON object: {excerpt(data)}")
        if "error" in event or event.get("object") == "error":  # the latter: older vLLM
            final = error_is_final(event.get("error", event))
            raise ServerError(f"error event {excerpt(data)}", retryable=not final)
        usage = event.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            self.usage = usage["completion_tokens"]
        choices = event.get("choices")
        return self._choice(choices[0]) if isinstance(choices, list) and choices else None

    def _choice(self, choice: dict[str, object]) -> Chunk | None:
        reason = choice.get("finish_reason")
        if reason:
            self.finish = "length" if reason == "length" else "stop"
        if self._kind == "chat":
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else None
        else:
            text = choice.get("text")
        lps = _logprobs(choice.get("logprobs"))
        if not isinstance(text, str) or not text:
            if lps:  # a token whose text the server holds back (a partial UTF-8 character)
                self.tokens += len(lps)
                return Chunk("", len(lps), None, sum(lps), (), lps)
            return None
        if lps:
            self.tokens += len(lps)
            return Chunk(text, len(lps), None, sum(lps), (), lps)
        self.tokens += 1
        return Chunk(text, tokens=1)

    def final(self) -> Chunk:
        if self.finish is None and self.full:  # cut at the budget (openai_http stops reading)
            self.finish = "length"
        if self.finish is None:  # also after a bare [DONE]: some servers cut streams that way
            end = "[DONE]" if self.done else "end of stream"
            raise ProtocolError(f"{end} after {self.tokens} chunks without a finish_reason")
        extra = max(0, self.usage - self.tokens) if self.usage is not None else 0
        return Chunk("", tokens=extra, finish_reason=self.finish)


def _logprobs(block: object) -> tuple[float, ...]:
    """The per-token log-probabilities of a chat choice's `logprobs` block (() if absent or
    not in OpenAI's shape: a server that ignores the request is not an error)."""
    content = block.get("content") if isinstance(block, dict) else None
    if not isinstance(content, list):
        return ()
    out = []
    for entry in content:
        lp = entry.get("logprob") if isinstance(entry, dict) else None
        if not isinstance(lp, int | float) or isinstance(lp, bool):
            return ()
        out.append(float(lp))
    return tuple(out)


async def strip_prefix(chunks: AsyncIterator[Chunk], prefix: str) -> AsyncIterator[Chunk]:
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
        yield _merged(held, text, chunk.finish_reason)
    if deciding and held:  # the stream ended while deciding (no finish reason came)
        yield _merged(held, "".join(c.text for c in held), None)


def _merged(held: list[Chunk], text: str, finish: FinishReason | None) -> Chunk:
    """One chunk for `held` with `text`: token counts and log-probabilities are kept."""
    lps = [c.logprob for c in held]
    logprob = None if any(lp is None for lp in lps) else sum(lp for lp in lps if lp is not None)
    per_token = tuple(x for c in held for x in c.token_logprobs)
    return Chunk(text, sum(c.tokens for c in held), finish, logprob, (), per_token)


def constraint_fields(
    constraint: Constraint | None, mode: ConstraintMode, endpoint: EndpointKind
) -> dict[str, object]:
    """The body fields that ask the server to enforce `constraint`. A JSON schema goes as
    `response_format` (`json_object` for the plain object schema); a regex or a grammar only
    where `mode` names a server with such a field. A constraint the mode cannot send raises a
    non-retryable BackendError: it is never silently dropped."""
    if constraint is None:
        return {}
    kind = constraint.kind
    if kind == "json_schema":
        if mode == "llama.cpp" and endpoint != "chat":
            _refuse(constraint, mode, "llama.cpp takes response_format on the chat endpoint only")
        schema = json.loads(constraint.source)
        if schema == {"type": "object"}:
            return {"response_format": {"type": "json_object"}}
        if mode == "llama.cpp":  # its server knows json_object with a schema, not json_schema
            return {"response_format": {"type": "json_object", "schema": schema}}
        spec = {"name": "output", "schema": schema, "strict": True}
        return {"response_format": {"type": "json_schema", "json_schema": spec}}
    if mode == "llama.cpp" and kind == "regex":  # as GBNF, the only language it takes
        try:
            return {"grammar": regex_to_gbnf(constraint.source)}
        except ConstraintError as exc:
            _refuse(constraint, mode, str(exc))
    table = {"regex": _REGEX, "grammar": _GRAMMAR}.get(kind, {})
    field = table.get(mode)
    if field is None:
        _refuse(constraint, mode, "no field of this server takes it")
    if mode == "llama.cpp" and "::=" not in constraint.source:
        _refuse(constraint, mode, "llama.cpp's `grammar` takes GBNF (`root ::= ...`), not Lark")
    if isinstance(field, tuple):
        return {field[0]: {field[1]: constraint.source}}
    return {field: constraint.source}


def _refuse(constraint: Constraint, mode: str, why: str) -> NoReturn:
    raise BackendError(
        f"cannot send a {constraint.kind} output constraint ({constraint.describe()}) to the"
        f" server with OpenAIConfig.constraints={mode!r}: {why}. JSON schemas go as"
        " response_format in every mode; regexes need 'llama.cpp' (as GBNF), 'vllm',"
        " 'vllm-guided' or 'sglang';"
        " grammars 'llama.cpp' (GBNF), 'vllm', 'vllm-guided' or 'sglang'; spans of a text only"
        " the local engine",
        retryable=False,
    )
