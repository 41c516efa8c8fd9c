"""`Constraint`: a frozen, hashable description of what a generation must look like.

Built by `json_schema`, `json_object`, `regex`, `grammar` and `span_of`; nothing here compiles
anything (see compiler.py) or touches a tokenizer, so constraints are cheap to build, compare and
use as cache keys.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["json_schema", "regex", "grammar", "span"]
SpanUnit = Literal["words", "chars"]
Whitespace = Literal["compact", "flexible"]


class ConstraintError(ValueError):
    """A constraint that cannot be compiled (the grammar library's reason is in the message),
    or a matcher that has no allowed token left."""


@dataclass(frozen=True)
class Constraint:
    """`source` is the schema (canonical JSON), the regex, the grammar text or the document.
    `stop` (span only) is a literal that must follow the span; `unit` (span only): whether a
    span starts and ends on word boundaries or on any character; `whitespace` (JSON only):
    "compact" allows exactly `{"a": 1, "b": [2, 3]}`, "flexible" any whitespace between tokens
    (unbounded: a small model can loop on newlines)."""

    kind: Kind
    source: str
    stop: str | None = None
    unit: SpanUnit = "words"
    whitespace: Whitespace = "compact"

    def describe(self) -> str:
        """A short human label for error messages (never the whole document)."""
        head = self.source if len(self.source) <= 60 else self.source[:57] + "..."
        return f"{self.kind} {head!r}"


def json_schema(schema: dict[str, Any] | str, whitespace: Whitespace = "compact") -> Constraint:
    """Output is JSON that validates against `schema` (a dict or its JSON text)."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as exc:
            raise ConstraintError(f"the JSON schema is not valid JSON: {exc}") from exc
    if not isinstance(schema, dict):
        raise ConstraintError(f"a JSON schema must be an object, not {type(schema).__name__}")
    canonical = json.dumps(schema, sort_keys=True, separators=(",", ":"))
    return Constraint("json_schema", canonical, whitespace=whitespace)


def json_object(whitespace: Whitespace = "compact") -> Constraint:
    """Output is any JSON object (OpenAI's `response_format={"type": "json_object"}`)."""
    return json_schema({"type": "object"}, whitespace)


def regex(pattern: str) -> Constraint:
    """Output matches `pattern` in full (Rust `regex` syntax, the common subset of Python's)."""
    return Constraint("regex", pattern)


def grammar(text: str) -> Constraint:
    """Output is accepted by a context-free grammar: Lark (`start: ...`, llguidance's dialect)
    or GBNF / EBNF as llama.cpp writes it (`root ::= ...`)."""
    return Constraint("grammar", text)


def span_of(text: str, stop: str | None = None, unit: SpanUnit = "words") -> Constraint:
    """Output is a non-empty substring of `text` (then `stop`, when given): every NER mention is a
    span of its document. `unit="words"` keeps the span on word boundaries."""
    if not text.strip():
        raise ConstraintError("span_of needs a non-empty text")
    return Constraint("span", text, stop=stop, unit=unit)
