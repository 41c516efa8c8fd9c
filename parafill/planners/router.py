"""The router (SoT-R by cost): decide per request whether decomposing pays.

Cheap features of the request say whether the answer is list-like (decomposes) or a chain
(math, code, puzzles, extraction, short facts: answer directly, as SoT-R found). For
list-like requests a backend cost model (step time vs. batch width, measured once and cached)
estimates both paths' decode time; decompose only where the estimate says it is faster. The
plan carries a note naming the path taken and why; it ends up in the run's result.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from parafill.orchestrator.plan import Expander, Plan
from parafill.planners.costs import CostModel
from parafill.planners.skeleton import SkeletonPlanner
from parafill.planners.static import DirectPlanner

Route = Literal["auto", "always", "never"]

# Requests whose answer is one chain (each part needs the previous one): answer directly.
_DIRECT_WORDS = {
    "code": r"python|javascript|typescript|java|c\+\+|c#|rust|golang|sql|regex|html|css|"
    r"function|code|program|algorithm|implement|script|debug|compile",
    "math": r"solve|calculate|compute|equation|integral|derivative|probability|how many|"
    r"how much|sum of|prime|area of|percent|remainder|value of",
    "extraction": r"extract|from the following|from the text|parse|json|csv|yaml|"
    r"named entities|identify the (names|entities|countries|people)",
    "one flowing text": r"e-?mail|story|poem|paragraph|headline|letter|translat\w*|edit|"
    r"rewrite|proofread|correct any|grammatical|limerick|song|slogan|tweet|sentence",
    "reading comprehension": r"passage|the text below|answer the questions?",
    "reasoning puzzle": r"suppose|riddle|puzzle|brain teaser|what position|how old|"
    r"true, false|true or false|if .{3,80} then|if you|your current position|where is|"
    r"who is (the )?(taller|older|faster)",
}
_DIRECT_CUES = tuple(
    (name, re.compile(rf"\b({words})\b", re.I)) for name, words in _DIRECT_WORDS.items()
) + (("math", re.compile(r"\d+\s*[-+*/^×÷=<>]\s*\d+|\b[xy]\s*[=^]")), ("code", re.compile(r"```")))
_LIST_CUES = re.compile(
    r"\b(ways|tips|steps|reasons|benefits|advantages|disadvantages|pros|cons|compare|explain|"
    r"describe|discuss|essay|blog|article|outline|strategies|ideas|list|factors|principles|"
    r"recommend|suggest|plan|guide|overview|impact|effects|causes)\b",
    re.I,
)
_SHORT_FACT = re.compile(r"^\s*(who|when|where|which|what is the|what was the|what year)\b", re.I)


@dataclass(frozen=True)
class Decision:
    decompose: bool
    reason: str


def features(question: str) -> Decision | None:
    """A direct-answer verdict from the text alone, or None when the text looks list-like."""
    for name, pattern in _DIRECT_CUES:
        if m := pattern.search(question):
            return Decision(False, f"{name} request ({m.group(0).strip()!r}): answers in order")
    words = len(question.split())
    if _SHORT_FACT.match(question) and words <= 12 and not _LIST_CUES.search(question):
        return Decision(False, f"short factual question ({words} words)")
    if not _LIST_CUES.search(question) and words <= 6:
        return Decision(False, f"short request without list cues ({words} words)")
    return None


@dataclass(frozen=True)
class Expected:
    """Typical token counts (SmolLM2 on MT-bench-style prompts); the cost estimate uses them."""

    direct_tokens: int = 350
    skeleton_tokens: int = 50
    points: int = 5
    point_tokens: int = 40


@dataclass(frozen=True)
class RouterPlanner:
    mode: Route = "auto"
    cost: CostModel | None = None
    skeleton: SkeletonPlanner = field(default_factory=SkeletonPlanner)
    direct: DirectPlanner = field(default_factory=DirectPlanner)
    expected: Expected = field(default_factory=Expected)
    margin: float = 1.2  # decompose only if estimated at least this much faster

    def decide(self, question: str) -> Decision:
        if self.mode == "always":
            return Decision(True, "--plan always")
        if self.mode == "never":
            return Decision(False, "--plan never")
        verdict = features(question)
        if verdict is not None:
            return verdict
        if self.cost is None:
            return Decision(True, "list-like request (no cost model: decomposing)")
        return self._by_cost(self.cost)

    def needs_costs(self, question: str) -> bool:
        """Whether deciding `question` takes the cost rule and this router has no cost model."""
        return self.mode == "auto" and self.cost is None and features(question) is None

    def _by_cost(self, cost: CostModel) -> Decision:
        e = self.expected
        direct = cost.decode(min(e.direct_tokens, self.direct.max_tokens))
        points = min(e.points, self.skeleton.max_points)
        tokens = min(e.point_tokens, self.skeleton.point_tokens)
        sot = cost.decode(e.skeleton_tokens) + cost.decode(tokens, points)
        why = f"estimated {sot:.1f} s decomposed vs {direct:.1f} s direct ({cost.source} costs)"
        return Decision(sot * self.margin < direct, f"list-like request; {why}")

    def plan(self, question: str) -> Plan:
        decision = self.decide(question)
        chosen = self.skeleton if decision.decompose else self.direct
        plan = chosen.plan(question)
        path = "skeleton-of-thought" if decision.decompose else "direct"
        return replace(plan, notes=(*plan.notes, f"router: {path} — {decision.reason}"))

    @property
    def expanders(self) -> Mapping[str, Expander]:
        return self.skeleton.expanders
