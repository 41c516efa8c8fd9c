"""The simplest planner: answer directly with one node (the baseline, and every fallback)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from parafill.orchestrator.plan import Expander, Node, Plan


def direct_node(question: str, max_tokens: int, node_id: str = "answer") -> Node:
    # the same filler as the planners' text nodes, so a decomposed answer and a direct one
    # are compared like with like
    return Node(node_id, question, max_tokens=max_tokens, filler="ngram")


@dataclass(frozen=True)
class DirectPlanner:
    max_tokens: int = 512

    def plan(self, question: str) -> Plan:
        return Plan((direct_node(question, self.max_tokens),), answer=("answer",))

    @property
    def expanders(self) -> Mapping[str, Expander]:
        return {}
