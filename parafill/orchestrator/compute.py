"""Built-in compute functions: pure Python over a compute node's dependency outputs (no model,
no tokens). `BUILTINS` is the registry plan files may name (`join`, `dedupe`, `vote`,
`answers`); callers may pass more to the runner. Also the short-answer extraction and the
majority vote they use. Nothing here runs anything: the runner calls these.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # plan.py imports this module for BUILTINS; types only, no import cycle
    from parafill.orchestrator.plan import Compute, Node

_BOXED = re.compile(r"\\boxed\{([^{}]{1,40})\}")
_SAID = re.compile(r"answer\b[^.\n]{0,30}?(?:\bis\b:?|:|=)\s*([^\n]{1,60})", re.I)
_BOLD = re.compile(r"\*\*([^*\n]{1,40})\*\*")
_EQUALS = re.compile(r"(?:=|\bequals\b)\s*([^=\n]{1,40})$", re.M)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
MAX_ANSWER_WORDS = 6


def extract_answer(text: str) -> str | None:
    """The final short answer a text committed to, normalized for voting, or None.
    Markers, strongest first: \\boxed{..}, 'the answer is ..', **..**, '= ..'; the FIRST
    occurrence wins because small models restate junk after committing. Fallback: the last
    number in the text."""
    found = marked_answer(text)
    if found is not None:
        return found
    numbers = _NUMBER.findall(text)
    return _normalize(numbers[-1]) if numbers else None


def marked_answer(text: str) -> str | None:
    """The answer behind the first marker (see `extract_answer`), without the fallback."""
    for pattern in (_BOXED, _SAID, _BOLD, _EQUALS):
        for m in pattern.finditer(text):
            answer = _normalize(m.group(1))
            if answer:
                return answer
    return None


def _normalize(raw: str) -> str | None:
    text = re.split(r"(?<=[^\d\s])[.!?;]|[.!?;](?=\s|$)|,\s", raw.strip(), maxsplit=1)[0]
    text = re.sub(r"[*`\"'$\\]", "", text).strip().lower()
    text = re.sub(r"^(?:the|a|an)\s+", "", text)
    if number := re.match(r"^-?\d[\d,]*(?:\.\d+)?", text):  # "48 apples" votes as "48"
        value = number.group(0).replace(",", "")
        return value[: -len(".0")] if value.endswith(".0") else value
    if not text or len(text.split()) > MAX_ANSWER_WORDS:
        return None  # a sentence, not a short answer
    return text


@dataclass(frozen=True)
class Vote:
    """A majority vote: each distinct answer with its count (most votes first), the winner,
    and how many voters gave no extractable answer."""

    counts: tuple[tuple[str, int], ...]
    winner: str
    unanswered: int

    @property
    def total(self) -> int:
        return sum(c for _, c in self.counts) + self.unanswered

    def describe(self) -> str:
        tally = ", ".join(f"{a!r} x{c}" for a, c in self.counts)
        return f"vote over {self.total} branches: {tally}; no answer: {self.unanswered}"


def majority(answers: Sequence[str | None]) -> Vote | None:
    """Majority over extracted answers; ties go to the answer seen first. None if no answers."""
    given = [a for a in answers if a is not None]
    if not given:
        return None
    counts = Counter(given)
    order = sorted(counts, key=lambda a: (-counts[a], given.index(a)))
    return Vote(tuple((a, counts[a]) for a in order), order[0], len(answers) - len(given))


# ---- the built-ins ---------------------------------------------------------------------------


def join(node: Node, inputs: Mapping[str, str]) -> str:
    """The outputs in dependency order, stripped, separated by `args.separator` (blank line)."""
    return node.arg("separator", "\n\n").join(t.strip() for t in inputs.values())


def dedupe(node: Node, inputs: Mapping[str, str]) -> str:
    """Every distinct non-empty line of the outputs, first occurrence first, one per line;
    lines equal up to case and spacing are one."""
    seen: dict[str, str] = {}
    for text in inputs.values():
        for line in text.splitlines():
            if line.strip():
                seen.setdefault(" ".join(line.lower().split()), line.strip())
    return "\n".join(seen.values())


def short_answer(text: str) -> str | None:
    """A marked answer, else the whole text when it is short, else the last number."""
    return marked_answer(text) or _normalize(text) or extract_answer(text)


def vote(node: Node, inputs: Mapping[str, str]) -> str:
    """The majority short answer over the outputs (normalized: lower case, no markup); ties go
    to the answer given first. Raises when no output holds a short answer."""
    result = majority([short_answer(t) for t in inputs.values()])
    if result is None:
        raise ValueError(f"no short answer to vote on in {', '.join(inputs) or 'no inputs'}")
    return result.winner


def answers(node: Node, inputs: Mapping[str, str]) -> str:
    """JSON, one entry per dependency: its id, its extracted short answer (or null) and
    whether a marker ('the answer is', \\boxed, ...) committed to it."""
    entries = [
        {"id": i, "answer": extract_answer(t), "marked": marked_answer(t) is not None}
        for i, t in inputs.items()
    ]
    return json.dumps(entries)


BUILTINS: Mapping[str, Compute] = MappingProxyType(
    {"join": join, "dedupe": dedupe, "vote": vote, "answers": answers}
)
