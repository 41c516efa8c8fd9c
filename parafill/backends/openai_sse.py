"""Reading an OpenAI-style completion stream: server-sent events into event payloads
(`SSEDecoder`), payloads into `Chunk`s (`ChunkParser`: text, per-token log-probabilities,
usage, finish reason). Pure parsing; the HTTP side lives in `openai_http`.
"""

from __future__ import annotations

import json
from typing import Literal

from parafill.backends.base import Chunk, FinishReason

EndpointKind = Literal["chat", "completions"]


class ProtocolError(Exception):
    """The server's stream was not what the OpenAI API promises."""


class SSEDecoder:
    """Server-sent events, fed line by line; returns each complete event's data."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> str | None:
        if not line:  # a blank line ends the event
            data, self._data = self._data, []
            return "\n".join(data) if data else None
        name, _, value = line.partition(":")
        if name == "data":  # comments (":...") and other fields are ignored
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None


class ChunkParser:
    """Turns event payloads into Chunks: one token per text chunk unless usage says more."""

    def __init__(self, kind: EndpointKind) -> None:
        self._kind = kind
        self.tokens = 0
        self.usage: int | None = None
        self.finish: FinishReason | None = None
        self.done = False

    def parse(self, data: str) -> Chunk | None:
        if data.strip() == "[DONE]":
            self.done = True
            return None
        try:
            event = json.loads(data)
        except ValueError as exc:
            raise ProtocolError(f"unparseable event {data[:80]!r}") from exc
        if not isinstance(event, dict) or "error" in event:
            raise ProtocolError(f"error event {data[:200]!r}")
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
