"""Parallel reasoning: N branches answer the same question by different approaches, then join.

Branch prompts put the question first and the approach hint last, so a prefix-sharing backend
prefills the shared part once. The join is a majority vote over extracted short answers
(recorded in the result notes) or, for open questions, a synthesis node over every branch.
The vote is computed in Python, not by the model: it needs no tokens and cannot miscount.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

from parafill.orchestrator.plan import Growth, Node, Plan
from parafill.orchestrator.runner import Expander

BRANCH_SYSTEM = "You are a careful problem solver."
BRANCH_PROMPT = (
    "Question: {question}\n\nSolve it step by step in a few sentences and end with a line "
    "'The answer is ...'.\nApproach {k}: {hint}"
)
HINTS = (
    "Work it out directly.",
    "Break the problem into smaller parts.",
    "Check the result a second way.",
    "Start from what the question gives you.",
    "Think of a simpler, similar example first.",
    "Explain it as you would to a friend.",
)
SYNTHESIS_PROMPT = (
    "Question: {question}\n\nSeveral drafts answered it:\n{drafts}\n\n"
    "Write one final answer that combines the best points of the drafts."
)
Mode = Literal["auto", "vote", "synthesis"]

_BOXED = re.compile(r"\\boxed\{([^{}]{1,40})\}")
_SAID = re.compile(r"answer\b[^.\n]{0,30}?(?:\bis\b:?|:|=)\s*([^\n]{1,60})", re.I)
_BOLD = re.compile(r"\*\*([^*\n]{1,40})\*\*")
_EQUALS = re.compile(r"(?:=|\bequals\b)\s*([^=\n]{1,40})$", re.M)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
MAX_ANSWER_WORDS = 6


def extract_answer(text: str) -> str | None:
    """The final short answer a branch committed to, normalized for voting, or None.
    Markers, strongest first: \\boxed{..}, 'the answer is ..', **..**, '= ..'; the FIRST
    occurrence wins because small models restate junk after committing. Fallback: the last
    number in the text."""
    found = _marked(text)
    if found is not None:
        return found
    numbers = _NUMBER.findall(text)
    return _normalize(numbers[-1]) if numbers else None


def _marked(text: str) -> str | None:
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
    and how many branches gave no extractable answer."""

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


@dataclass
class _Tally:
    """Branch outputs of one run, collected as branches finish; the last one decides the join."""

    question: str
    mode: Mode
    ids: tuple[str, ...]
    join_tokens: int
    done: Callable[[], object]  # forgets this tally in the planner
    texts: dict[str, str] = field(default_factory=dict)

    def add(self, node: Node, text: str) -> Growth:
        self.texts[node.id] = text
        if len(self.texts) < len(self.ids):
            return Growth()
        self.done()
        texts = [self.texts[i] for i in self.ids]
        answers = [extract_answer(t) for t in texts]
        strong = sum(_marked(t) is not None for t in texts)
        vote = majority(answers)
        if (
            vote is None
            or self.mode == "synthesis"
            or (self.mode == "auto" and 2 * strong < len(texts))
        ):
            return self._synthesis(vote)
        best = next(i for i, a in zip(self.ids, answers, strict=True) if a == vote.winner)
        return Growth((), (best,), note=f"{vote.describe()}; answer {vote.winner!r} from {best}")

    def _synthesis(self, vote: Vote | None) -> Growth:
        drafts = "\n\n".join(f"Draft {k}:\n{{{{{i}}}}}" for k, i in enumerate(self.ids, 1))
        prompt = SYNTHESIS_PROMPT.format(question=self.question, drafts=drafts)
        join = Node("join", prompt, self.ids, self.join_tokens, "ngram", system=BRANCH_SYSTEM)
        why = "no short answers to vote on" if vote is None else vote.describe()
        return Growth((join,), ("join",), note=f"synthesis over {len(self.ids)} branches ({why})")


@dataclass(frozen=True)
class ReasoningPlanner:
    branches: int = 4
    mode: Mode = "auto"
    hints: tuple[str, ...] = HINTS
    branch_tokens: int = 128
    join_tokens: int = 192
    temperature: float = 0.0
    seed: int = 0  # branch k samples with seed + k (reproducible, and branches differ)
    max_branches: int = 16
    _tallies: dict[str, _Tally] = field(default_factory=dict, init=False, repr=False)
    _runs: itertools.count[int] = field(default_factory=itertools.count, init=False, repr=False)

    def plan(self, question: str) -> Plan:
        if not 1 <= self.branches <= self.max_branches:
            raise ValueError(
                f"branches is {self.branches}; it must be 1..{self.max_branches} (max_branches)"
            )
        hook = f"reasoning-{next(self._runs)}"  # one tally per planned run
        nodes = tuple(self._branch(question, k, hook) for k in range(1, self.branches + 1))
        ids = tuple(n.id for n in nodes)
        done = partial(self._tallies.pop, hook, None)
        self._tallies[hook] = _Tally(question, self.mode, ids, self.join_tokens, done)
        return Plan(nodes, answer=ids)

    def _branch(self, question: str, k: int, hook: str) -> Node:
        hint = self.hints[(k - 1) % len(self.hints)]
        return Node(
            f"branch-{k}",
            BRANCH_PROMPT.format(question=question, k=k, hint=hint),
            max_tokens=self.branch_tokens,
            filler="ngram",
            system=BRANCH_SYSTEM,
            expand=hook,
            temperature=self.temperature,
            seed=self.seed + k if self.temperature > 0 else None,
            stop=("\nQuestion:",),  # small models start asking themselves new questions
        )

    @property
    def expanders(self) -> Mapping[str, Expander]:
        return {name: tally.add for name, tally in self._tallies.items()}
