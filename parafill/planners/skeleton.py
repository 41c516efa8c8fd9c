"""Skeleton-of-Thought: outline as numbered points, expand every point in parallel, join.

The skeleton node's output grows the plan with one expansion node per parsed point; the
expansion prompts share everything up to the point number, so a prefix-sharing backend
prefills it once. A skeleton whose points repeat (a small model loops on its first) is
continued once after its distinct points with repeats refused by its grammar (a regex, so a
llama.cpp server applies it as GBNF too); one that still does not parse falls back to a direct
answer, with a note.
The question is bound on the skeleton node (`args`) when the plan is made. On a backend that
applies grammars the skeleton node is constrained to the parser's format (grammars.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from parafill.orchestrator.plan import Expander, Growth, Node, Plan
from parafill.planners.grammars import POINT_WORDS, skeleton_constraint
from parafill.planners.static import direct_node

SKELETON_SYSTEM = (
    "You're an organizer responsible for only giving the skeleton (not the full content) "
    "for answering the question."
)
# One worked example: on the 20 MT-bench questions SmolLM2-135M wrote a parseable skeleton for
# 15 (was 11 with the paper's instruction-only prompt), 43 of 52 with the captured questions
# (was 36), in 18% fewer tokens (stopped before it invents a next question).
SKELETON_PROMPT = (
    "Write only a short outline of the answer: 3 to 8 numbered points of 3-5 words each, "
    "one per line, no explanations.\n\n"
    "Example\nQuestion: How can I improve my sleep?\nOutline:\n1. Keep a regular schedule\n"
    "2. Limit screens before bed\n3. Avoid late caffeine\n4. Make the bedroom dark\n\n"
    "Question: {question}\nOutline:"
)
POINT_SYSTEM = "You are a helpful assistant."
POINT_PROMPT = (
    "Question: {question}\n\nThe answer has these points:\n{skeleton}\n\n"
    "Write only point {k} in 1~2 sentences."
)

_NUMBERED = re.compile(r"^\s*(?:[*_#>]+\s*)?(?:step|point)?\s*(\d{1,2})\s*[.):\]-]\s*(.+)$", re.I)
_BULLET = re.compile(r"^\s*[-*\u2022+]\s+(.+)$")
MAX_POINT_WORDS = POINT_WORDS
_MARKUP = re.compile(r"[*_`#]+")


def parse_points(text: str, max_points: int = 10) -> list[str]:
    """Points of a skeleton as small models really write them. Numbered items win over
    bullets (bullets then are sub-points); duplicates and empty items are dropped."""
    numbered, bullets = [], []
    in_code = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
        if in_code:
            continue  # a list inside a code block is code, not an outline
        if m := _NUMBERED.match(line):
            numbered.append(m.group(2))
        elif m := _BULLET.match(line):
            bullets.append(m.group(1))
    points: list[str] = []
    seen: set[str] = set()
    for raw in numbered or bullets:
        point = _clean(raw)
        key = point.lower()
        if point and key not in seen:
            seen.add(key)
            points.append(point)
    return points[:max_points]


def _clean(raw: str) -> str:
    text = _MARKUP.sub("", raw).strip()
    head, sep, _ = text.partition(":")
    if sep and 2 <= len(head) <= 60:  # "Exercise: long explanation" → "Exercise"
        text = head
    text = re.split(r"(?<=[a-z0-9)])[.!?]\s", text, maxsplit=1)[0]  # first sentence only
    words = text.split()
    if len(words) > MAX_POINT_WORDS:
        text = " ".join(words[:MAX_POINT_WORDS])
    return text.strip(" .;:-\u2013\u2014\"'").strip()


@dataclass(frozen=True)
class SkeletonPlanner:
    max_points: int = 8
    min_points: int = 2
    skeleton_tokens: int = 128
    point_tokens: int = 96
    direct_tokens: int = 512
    constrained: bool = True  # the skeleton's format as a grammar (backends that apply one)

    def plan(self, question: str) -> Plan:
        return Plan((self._skeleton_node(question),), answer=())

    def _skeleton_node(self, question: str, points: tuple[str, ...] = ()) -> Node:
        """The skeleton, or (`points` given) its continuation after those points: the model
        repeated a point, so the listing so far is prefilled and repeats are refused."""
        k = len(points) + 1
        listing = "".join(f"{j}. {p}\n" for j, p in enumerate(points, 1))
        constraint = None
        if self.constrained:
            constraint = skeleton_constraint(self.max_points, self.min_points, k, points)
        return Node(
            "skeleton" if not points else "skeleton-more",
            SKELETON_PROMPT.format(question=question),
            max_tokens=self.skeleton_tokens,
            system=SKELETON_SYSTEM,
            expand="skeleton",
            filler="ngram",
            prefix=f"{listing}{k}.",  # start the list: small models otherwise answer in prose
            # after the outline the model tends to invent the next example; not a blank-line stop:
            # servers that cannot continue the "1." prefill may put a preamble before the list
            stop=("\nQuestion:",),
            args=(("question", question),),
            constraint=constraint,
            stop_repeated_line=True,  # a repeated point starts a loop; points are deduplicated
        )

    @property
    def expanders(self) -> Mapping[str, Expander]:
        return {"skeleton": self._expand}

    def _expand(self, node: Node, text: str) -> Growth:
        question = node.arg("question")
        points = parse_points(node.prefix + text, self.max_points)
        if len(points) < self.min_points:
            why = "no numbered points" if not points else f"only {len(points)} point"
            if points and node.id == "skeleton" and node.constraint is not None:
                # a small model loops on its first point: ask once more with repeats refused
                # (the hook sees no constraint where the backend could not apply one)
                more = self._skeleton_node(question, tuple(points))
                note = f"skeleton repeated its points ({why}); continued with repeats refused"
                return Growth((more,), None, note=note)
            answer = direct_node(question, self.direct_tokens, "direct")
            note = f"skeleton did not parse ({why}); answered directly"
            return Growth((answer,), ("direct",), note=note)
        listing = "\n".join(f"{k}. {p}" for k, p in enumerate(points, 1))
        nodes = tuple(
            Node(
                f"point-{k}",
                POINT_PROMPT.format(question=question, skeleton=listing, k=k, point=p),
                max_tokens=self.point_tokens,
                filler="ngram",  # drafts from the question and the skeleton in its prompt
                system=POINT_SYSTEM,
                prefix=f"{k}. {p}:",
                stop=("\n",),  # one paragraph per point; small models run on into the list
            )
            for k, p in enumerate(points, 1)
        )
        return Growth(nodes, tuple(n.id for n in nodes), note=f"skeleton: {len(points)} points")
