"""Parallel reasoning: N branches answer the same question by different approaches, then join.

Branch prompts put the question first and the approach hint last, so a prefix-sharing backend
prefills the shared part once. The join is a majority vote over extracted short answers
(recorded in the result notes) or, for open questions, a synthesis node over every branch.
The vote is computed in Python, not by the model: a compute node (`answers`) collects every
branch's short answer once all are done (no tokens, cannot miscount), and its expand hook votes
and grows the join. The planner holds no state between runs: the question rides on the node.
On a backend that applies grammars every branch ends with the line "The answer is ..."
(grammars.py), so the vote has each branch's committed answer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from parafill.orchestrator.compute import Vote, extract_answer, majority
from parafill.orchestrator.plan import Expander, Growth, Node, Plan
from parafill.planners.grammars import answer_constraint

__all__ = ["Mode", "ReasoningPlanner", "Vote", "extract_answer", "majority"]

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
ANSWERS = "answers"  # the compute node collecting every branch's short answer
EXPAND = "reasoning"  # its expand hook: the vote, or a synthesis node


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
    # on backends that apply grammars, each branch ends with "The answer is ..." (the vote's
    # marker) within its token budget; chars of free reasoning allowed before that line:
    constrained: bool = True

    def plan(self, question: str) -> Plan:
        if not 1 <= self.branches <= self.max_branches:
            raise ValueError(
                f"branches is {self.branches}; it must be 1..{self.max_branches} (max_branches)"
            )
        nodes = tuple(self._branch(question, k) for k in range(1, self.branches + 1))
        ids = tuple(n.id for n in nodes)
        collect = Node(
            ANSWERS,
            "",
            ids,
            kind="compute",
            fn="answers",
            expand=EXPAND,
            args=(("question", question),),
        )
        return Plan((*nodes, collect), answer=ids)

    def _branch(self, question: str, k: int) -> Node:
        hint = self.hints[(k - 1) % len(self.hints)]
        return Node(
            f"branch-{k}",
            BRANCH_PROMPT.format(question=question, k=k, hint=hint),
            max_tokens=self.branch_tokens,
            filler="ngram",
            system=BRANCH_SYSTEM,
            temperature=self.temperature,
            seed=self.seed + k if self.temperature > 0 else None,
            stop=("\nQuestion:",),  # small models start asking themselves new questions
            constraint=answer_constraint(self._body_chars) if self.constrained else None,
        )

    @property
    def _body_chars(self) -> int:
        # 2 characters per token (arithmetic runs ~1.3, prose ~4), ~24 tokens for the answer
        return 2 * max(8, self.branch_tokens - 24)

    @property
    def expanders(self) -> Mapping[str, Expander]:
        return {EXPAND: self._join}

    def _join(self, node: Node, text: str) -> Growth:
        """The vote over the `answers` node's output, or a synthesis node over every branch."""
        entries = json.loads(text)
        ids = tuple(e["id"] for e in entries)
        answers = [e["answer"] for e in entries]
        strong = sum(bool(e["marked"]) for e in entries)
        vote = majority(answers)
        if (
            vote is None
            or self.mode == "synthesis"
            or (self.mode == "auto" and 2 * strong < len(entries))
        ):
            return self._synthesis(node.arg("question"), ids, vote)
        best = next(i for i, a in zip(ids, answers, strict=True) if a == vote.winner)
        return Growth((), (best,), note=f"{vote.describe()}; answer {vote.winner!r} from {best}")

    def _synthesis(self, question: str, ids: tuple[str, ...], vote: Vote | None) -> Growth:
        drafts = "\n\n".join(f"Draft {k}:\n{{{{{i}}}}}" for k, i in enumerate(ids, 1))
        prompt = SYNTHESIS_PROMPT.format(question=question, drafts=drafts)
        join = Node("join", prompt, ids, self.join_tokens, "ngram", system=BRANCH_SYSTEM)
        why = "no short answers to vote on" if vote is None else vote.describe()
        return Growth((join,), ("join",), note=f"synthesis over {len(ids)} branches ({why})")
