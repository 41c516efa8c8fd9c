"""`compile(constraint, info) -> Compiled`, cached (LRU) by (constraint, tokenizer).

A `Compiled` holds one pristine llguidance matcher whose first mask has been computed (so bad
grammars fail here, with the library's reason, and not at the first decode step); every
`matcher()` is a cheap copy of it that shares the compiled lexer and parser tables.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import llguidance

from parafill.constraints.matcher import Matcher
from parafill.constraints.spec import Constraint, ConstraintError
from parafill.constraints.tokenizer import TokenizerInfo

CACHE_SIZE = 128
# separators as json.dumps writes them (and OpenAI structured outputs), no other whitespace
COMPACT: Any = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


@dataclass(frozen=True)
class Compiled:
    constraint: Constraint
    info: TokenizerInfo
    template: Any = field(compare=False, repr=False)  # llguidance.LLMatcher, never advanced

    def matcher(self) -> Matcher:
        """A fresh matcher at the start of the output, for one sequence."""
        return Matcher(self.template.deep_copy(), self.info.n_vocab, self.info.eos_ids)


def compile(constraint: Constraint, info: TokenizerInfo) -> Compiled:  # noqa: A001
    """The compiled constraint; raises ConstraintError with the library's reason."""
    return _compile_cached(constraint, info)


def cache_clear() -> None:
    _compile_cached.cache_clear()


@lru_cache(maxsize=CACHE_SIZE)
def _compile_cached(constraint: Constraint, info: TokenizerInfo) -> Compiled:
    text = _grammar_text(constraint)
    lib = llguidance.LLMatcher(info.lib, text, log_level=0)
    if lib.is_error():
        raise _error(constraint, lib.get_error())
    compiled = Compiled(constraint, info, lib)
    probe = compiled.matcher()
    if not probe.first_mask_ok():
        raise _error(constraint, probe.error() or "no token is allowed at the start")
    return compiled


def _error(c: Constraint, reason: str, limit: int = 600) -> ConstraintError:
    """The library's reason, shortened in the middle: it may quote a whole document."""
    if len(reason) > limit:
        reason = reason[: limit // 2] + " [...] " + reason[-limit // 2 :]
    return ConstraintError(f"cannot compile {c.describe()}: {reason.strip()}")


def _grammar_text(c: Constraint) -> str:
    """The llguidance grammar (its JSON form) for a constraint."""
    try:
        if c.kind == "json_schema":
            options = COMPACT if c.whitespace == "compact" else None
            return str(llguidance.LLMatcher.grammar_from_json_schema(c.source, options))
        if c.kind == "regex":
            return str(llguidance.LLMatcher.grammar_from_regex(c.source))
        if c.kind == "grammar":
            return str(llguidance.grammar_from("grammar", c.source))
        return str(llguidance.LLMatcher.grammar_from_lark(_span_lark(c)))
    except (ValueError, RuntimeError) as exc:
        raise _error(c, str(exc)) from exc


def _span_lark(c: Constraint) -> str:
    """llguidance's own substring lexeme over the text's words or chars (no list of spans: a
    page costs milliseconds), intersected with `.+` to be non-empty, then the stop."""
    key = "substring_words" if c.unit == "words" else "substring_chars"
    stop = "" if c.stop is None else " " + json.dumps(c.stop, ensure_ascii=False)
    return f"start: SPAN{stop}\nSPAN: %regex {json.dumps({key: c.source})} & /(?s:.+)/\n"
