"""Long-document writer: outline → every (sub)section body in parallel → section summaries →
introduction and conclusion, assembled as Markdown in outline order (introduction first, written
last). The outline parser (outline.py) copes with what small models write; an outline with too
few usable sections falls back to a direct answer, with a note; on a backend that applies
grammars the outline node is constrained to the parser's format (grammars.py). It does not
judge content quality.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from functools import partial

from parafill.orchestrator.plan import Expander, Growth, Node, Plan, RunResult
from parafill.planners.grammars import outline_constraint
from parafill.planners.outline import (
    META,
    NON_ALNUM,
    Outline,
    OutlineError,
    OutlineLimits,
    Section,
    label,
    parse_outline,
    title_key,
)

__all__ = [
    "META", "DocumentPlanner", "Outline", "OutlineError", "OutlineLimits", "Section",
    "parse_outline", "part_id", "topic_of",
]  # fmt: skip


WRITER_SYSTEM = "You are a helpful assistant."
OUTLINE_PROMPT = (
    'Write the table of contents of an article titled "{topic}". List 4 main sections, each '
    "about a different aspect of the topic, numbered 1., 2., 3., 4.; under each section, list 2 "
    "subsections numbered like 2.1 and 2.2. Only short titles, no sentences. Do not repeat a title."
)
OUTLINE_PREFIX = "Table of contents:\n\n1."
# Everything before the part's name is the same for every body node (prefilled once).
BODY_PROMPT = (
    'You are writing an article titled "{topic}". Its outline:\n{listing}\n\n'
    "Write the text of one part of this article: one short paragraph of plain prose, with no "
    "heading and no list. The part is: {part}"
)
SUMMARY_PROMPT = (
    'Part {num} of an article about "{topic}", titled "{title}":\n\n{bodies}\n\n'
    "Summarize this part in one sentence."
)
FRAME_PROMPT = (
    'You are writing an article titled "{topic}". Its outline:\n{listing}\n\n'
    "In short, the article says: {summaries}\n\n{task}"
)
FRAME_TASK = "Write the {} of this article in one short paragraph. No heading."
FRAMES = {"intro": ("introduction", "This article"), "conclusion": ("conclusion", "In conclusion,")}
_STOP = ("\n#",)  # a new heading means the model ran on into the next part


@dataclass(frozen=True)
class DocumentPlanner:
    """Section summaries are nodes of their own (one short parallel stage after the bodies):
    intro and conclusion then read a sentence per section, not every body (short prompts)."""

    limits: OutlineLimits = OutlineLimits()
    outline_tokens: int = 120
    section_tokens: int = 160
    summary_tokens: int = 40
    frame_tokens: int = 160  # introduction and conclusion
    direct_tokens: int = 512
    constrained: bool = True  # the outline's format as a grammar (backends that apply one)

    def plan(self, question: str) -> Plan:
        stop = ("\n\n", f"\n{self.limits.max_sections + 3}.")  # list ended, or runs on
        node = _node("outline", self.outline_tokens, OUTLINE_PROMPT.format(topic=question))
        topic = (("topic", question),)  # bound here: nothing parses it back out of the prompt
        node = replace(node, expand="outline", prefix=OUTLINE_PREFIX, stop=stop, args=topic)
        if self.constrained:
            grammar = outline_constraint(self.limits, question, META)
            node = replace(node, constraint=grammar)
        return Plan((node,), answer=())

    @property
    def expanders(self) -> Mapping[str, Expander]:
        return {"outline": self._expand}

    def _expand(self, node: Node, text: str) -> Growth:
        topic = topic_of(node)
        try:
            outline = parse_outline(node.prefix + text, self.limits, topic)
        except OutlineError as exc:
            prompt = f"Write a short article about: {topic}"
            direct = _node("direct", self.direct_tokens, prompt, stop=())
            why = f"outline did not parse ({exc}); answered directly"
            return Growth((direct,), ("direct",), note=why)
        nodes = self.grow(topic, outline)
        subs = sum(len(s.subsections) for s in outline.sections)
        head = f"outline: {len(outline.sections)} sections, {subs} subsections"
        answer = ("intro", *(n.id for n in nodes if n.id[0].isdigit()), "conclusion")
        return Growth(nodes, answer, note="; ".join((head, *outline.notes)))

    def grow(self, topic: str, outline: Outline) -> tuple[Node, ...]:
        """Body nodes (no dependencies), one summary per section, introduction, conclusion."""
        listing = outline.listing()
        body = partial(BODY_PROMPT.format, topic=topic, listing=listing)
        bodies = {
            n: replace(_node(part_id(n, t), self.section_tokens, body(part=f"{n} {t}")), prefix=t)
            for n, t, leaf in outline.parts()
            if leaf
        }
        sums = [self._summary(topic, str(k), s, bodies) for k, s in enumerate(outline.sections, 1)]
        lines = " ".join(f"{{{{{s.id}}}}}" for s in sums)  # prose: a list would be copied
        frame = partial(FRAME_PROMPT.format, topic=topic, listing=listing, summaries=lines)
        deps = [s.id for s in sums]
        frames = [  # a started sentence keeps a small model on the article, not on itself
            replace(_node(i, self.frame_tokens, frame(task=FRAME_TASK.format(w)), deps), prefix=p)
            for i, (w, p) in FRAMES.items()
        ]
        return (*bodies.values(), *sums, *frames)

    def _summary(self, topic: str, num: str, sec: Section, bodies: Mapping[str, Node]) -> Node:
        own = [b for n, b in bodies.items() if n == num or n.startswith(f"{num}.")]
        text = "\n\n".join(f"{b.prefix}{{{{{b.id}}}}}" for b in own)  # the body as written
        prompt = SUMMARY_PROMPT.format(num=num, topic=topic, title=sec.title, bodies=text)
        return _node(f"sum-{num}", self.summary_tokens, prompt, [b.id for b in own], stop=("\n",))

    def outline_of(self, result: RunResult) -> Outline | None:
        """The outline this run used (parsed again from the outline node's output)."""
        done, node = result.results.get("outline"), result.plan.node("outline")
        if done is None or "direct" in result.plan.answer:
            return None
        return parse_outline(node.prefix + done.text, self.limits, topic_of(node))

    def markdown(self, result: RunResult) -> str:
        """Title, intro, (sub)sections in outline order, conclusion; unwritten parts marked."""
        topic = topic_of(result.plan.node("outline"))
        texts = {i: result.plan.node(i).prefix + r.text for i, r in result.results.items()}
        outline = self.outline_of(result)
        if outline is None:
            return f"# {topic}\n\n{_body(texts.get('direct', ''), topic)}\n"
        parts = [f"# {topic}", "## Introduction", _body(texts.get("intro"), "Introduction")]
        for num, title, leaf in outline.parts():
            parts.append(f"{'###' if '.' in num else '##'} {label(num)} {title}")
            if leaf:
                parts.append(_body(texts.get(part_id(num, title)), title))
        parts += ["## Conclusion", _body(texts.get("conclusion"), "Conclusion")]
        return "\n\n".join(p for p in parts if p) + "\n"


def _node(
    nid: str, tokens: int, prompt: str, deps: Iterable[str] = (), stop: tuple[str, ...] = _STOP
) -> Node:
    return Node(nid, prompt, tuple(deps), tokens, "ngram", system=WRITER_SYSTEM, stop=stop)


def part_id(num: str, title: str) -> str:
    """Node id of a (sub)section body: its number and a slug of its title."""
    slug = NON_ALNUM.sub("-", title.lower()).strip("-")[:32].rstrip("-")
    return f"{num}-{slug}" if slug else num


def topic_of(node: Node) -> str:  # bound when planned
    return node.arg("topic")


def _body(text: str | None, title: str) -> str:
    """A body without the heading lines a model may have started it with."""
    if text is None:
        return "_(not written: the run stopped before this part)_"
    lines = text.strip().splitlines()
    while len(lines) > 1 and _heading_like(lines[0], title):
        lines = "\n".join(lines[1:]).strip().splitlines()
    return "\n".join(lines)


def _heading_like(line: str, title: str) -> bool:  # "## 1.1 Soil", "Soil: a story" (no stop)
    return (
        line.startswith("#")
        or title_key(line).startswith(title_key(title))
        and line[-1] not in ".!?"
    )
