"""Long-document writer: outline → every (sub)section body in parallel → section summaries →
introduction and conclusion, assembled as Markdown in outline order (introduction first, written
last). The outline parser copes with what small models write; an outline with too few usable
sections falls back to a direct answer, with a note. It does not judge content quality.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from functools import partial

from parafill.orchestrator.plan import Expander, Growth, Node, Plan, RunResult


class OutlineError(ValueError):
    """The model's outline cannot become a document plan (the message says why)."""


@dataclass(frozen=True)
class Section:
    title: str
    subsections: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outline:
    sections: tuple[Section, ...]
    notes: tuple[str, ...] = ()

    def parts(self) -> Iterator[tuple[str, str, bool]]:
        """(number, title, is_leaf) in reading order; a leaf gets a body of its own."""
        for k, sec in enumerate(self.sections, 1):
            yield str(k), sec.title, not sec.subsections
            for j, sub in enumerate(sec.subsections, 1):
                yield f"{k}.{j}", sub, True

    def listing(self) -> str:
        return "\n".join(f"{'   ' * ('.' in n)}{_label(n)} {t}" for n, t, _ in self.parts())


@dataclass(frozen=True)
class OutlineLimits:
    max_sections: int = 5
    max_subsections: int = 3
    max_depth: int = 2  # 1: sections only; 2: sections and subsections
    min_sections: int = 2
    max_title_words: int = 12

    def __post_init__(self) -> None:
        if self.max_depth not in (1, 2):
            raise ValueError(f"max_depth is {self.max_depth}: 1 (sections) or 2 (subsections)")
        if not 1 <= self.min_sections <= self.max_sections:
            raise ValueError(f"max_sections {self.max_sections} < min_sections {self.min_sections}")
        if self.max_subsections < 0:
            raise ValueError(f"max_subsections is {self.max_subsections}: it must be >= 0")


_HEADING = re.compile(r"^(#{1,6})\s+(.+?)[\s#]*$")
_DOTTED = re.compile(r"^(\s*)[*_]{0,2}(\d{1,2}(?:\.\d{1,2})+)\.?\)?\s+(.+)$")
_NUMBER = re.compile(r"^(\s*)[*_]{0,2}(\d{1,2})[.)]\s+(.+)$")
_WORD = re.compile(r"^(\s*)[*_]{0,2}(?:section|part|chapter)\s+(\w{1,4})\s*[:.)-]\s*(.+)$", re.I)
_LETTER = re.compile(r"^(\s*)([A-Za-z]|[IVX]{2,4})[.)]\s+(.+)$")
_BULLET = re.compile(r"^(\s*)[-*\u2022+]\s+(.+)$")
_MARKUP = re.compile(r"[*_`#]+")
_KEY = re.compile(r"[^a-z0-9]+")
_LEAD = re.compile(r"^(?:title|(?:chapter|section|part)\s+\w{1,4})\s*[:.)-]\s*", re.I)
META = set(  # a title of these words only is framing or meta, not a section
    "title section subsection table of contents the article purpose description overview outline "
    "document text introduction intro conclusion summary final thoughts key points topic about "
    "what is".split()
)


@dataclass(frozen=True)
class _Item:
    kind: str  # what marks it: "num", "h2", "bullet", "dot2", ...
    indent: int
    title: str
    depth: int | None = None  # explicit depth (dotted numbers)
    number: int | None = None
    cut: bool = False  # the last line of unterminated text


_Top = tuple[_Item, list[tuple[_Item, int]]]  # a top-level item and the (item, level) below it


def _match(line: str) -> _Item | None:
    if m := _HEADING.match(line):
        return _Item(f"h{len(m.group(1))}", 0, m.group(2))
    if m := _DOTTED.match(line):
        depth = m.group(2).count(".") + 1
        return _Item(f"dot{depth}", len(m.group(1)), m.group(3), depth)
    if m := _NUMBER.match(line):
        return _Item("num", len(m.group(1)), m.group(3), number=int(m.group(2)))
    if m := _WORD.match(line):
        return _Item("word", len(m.group(1)), m.group(3))
    if m := _LETTER.match(line):
        kind = "roman" if len(m.group(2)) > 1 else "upper" if m.group(2).isupper() else "lower"
        return _Item(kind, len(m.group(1)), m.group(3))
    if m := _BULLET.match(line):
        return _Item("bullet", len(m.group(1)), m.group(2))
    return None


def _items(text: str) -> list[_Item]:
    """The first list in `text`, up to chatter after a blank line or numbering restarting."""
    items: list[_Item] = []
    in_code = gap = False
    for line in text.expandtabs(4).splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
        if in_code or not line.strip():
            gap = gap or bool(items)
            continue
        item = None if line.lstrip().startswith("|") else _match(line)
        if item is None:
            if gap and len(items) >= 2 and not items[-1].kind.startswith("h"):
                break  # chatter after the list
            continue
        if item.number == 1 and any(i.kind == "num" and i.indent == item.indent for i in items):
            break  # the list starts over
        items.append(item)
        gap = False
    if items and not text.endswith("\n") and items[-1].title in text.splitlines()[-1]:
        items[-1] = replace(items[-1], cut=True)  # the model may have been stopped mid-title
    return items


def _levels(items: list[_Item]) -> list[int]:
    """Nesting level per item, from explicit dotted depth, else marker kind and indentation."""
    stack: list[tuple[str, int]] = []
    levels = []
    for it in items:
        key = (it.kind, it.indent)
        same = [i for i, k in enumerate(stack) if k == key]
        if it.depth is not None:
            level = min(it.depth, len(stack) + 1)
        elif same:
            level = same[-1] + 1
        elif stack and it.indent < stack[-1][1]:
            level = 1 + sum(1 for _, ind in stack if ind < it.indent)
        else:
            level = len(stack) + 1
        stack = [*stack[: level - 1], key]
        levels.append(level)
    return levels


def _title(raw: str, max_words: int) -> str:
    text = _MARKUP.sub("", raw).strip()
    text = _LEAD.sub("", text)
    text = re.sub(r"^\d{1,2}(?:\.\d{1,2})*[.)]?\s+", "", text)  # "## 2. Title" → "Title"
    head, sep, tail = text.partition(":")
    if sep and len(tail.split()) > 5:  # "Bees: a sentence about bees" → "Bees"
        text = head
    text = re.split(r"(?<=[a-z0-9)])[.!?]\s", text, maxsplit=1)[0]
    text = text.strip(" .;:-\u2013\u2014\"'")
    if not re.search("[^\\W\\d_]", text) or len(text.split()) > max_words:
        return ""  # a bare number, or a sentence: not a title
    return text


def _key(title: str) -> str:
    return _KEY.sub(" ", title.lower()).strip()


def parse_outline(text: str, limits: OutlineLimits | None = None, topic: str = "") -> Outline:
    """Sections and subsections as small models really write them; raises `OutlineError`
    (with the reason) when fewer than `limits.min_sections` sections remain."""
    lim = limits or OutlineLimits()
    items = _items(text)
    if not items:
        raise OutlineError("no numbered items, bullets or headings")
    tree = _tree(items, _levels(items))
    notes: list[str] = []
    sections = _filter(tree, lim, topic, notes)
    if len(sections) == 1 and len(sections[0].subsections) >= lim.min_sections:
        notes.append(f"read the lone section {sections[0].title!r} as the title")
        sections = [Section(t) for t in sections[0].subsections]
    if len(sections) < lim.min_sections:
        raise OutlineError(
            f"{len(sections)} usable section(s), need at least {lim.min_sections}"
            + (f" ({'; '.join(notes)})" if notes else "")
        )
    return Outline(_cap(sections, lim, notes), tuple(notes))


def _tree(items: list[_Item], levels: list[int]) -> list[_Top]:
    """Level-1 items with the (item, level) pairs below; a lone first top item is a title."""
    if levels.count(1) == 1 and levels[0] == 1 and len(levels) >= 3:
        items, levels = items[1:], [lv - 1 for lv in levels[1:]]
    tree: list[_Top] = []
    for it, lv in zip(items, levels, strict=True):
        if lv == 1 or not tree:
            tree.append((it, []))
        else:
            tree[-1][1].append((it, lv))
    return tree


_WHY = {
    "repeated": "repeated titles",
    "framing": "introduction/conclusion/meta titles (written separately)",
    "sentence": "items longer than {words} words (sentences, not titles)",
    "deep": "items deeper than max_depth={depth}",
}


def _why_dropped(title: str, key: str, seen: set[str]) -> str:
    framing = all(w in META or w[:-1] in META for w in key.split())
    return "sentence" if not title else "framing" if framing else "repeated" * (key in seen)


def _filter(tree: list[_Top], lim: OutlineLimits, topic: str, notes: list[str]) -> list[Section]:
    seen, dropped = {_key(topic)}, dict.fromkeys(_WHY, 0)

    def usable(it: _Item) -> str:
        title = _title(it.title, lim.max_title_words)
        key = _key(title)
        if it.cut and any(k.startswith(key) for k in seen):
            key = next(k for k in seen if k.startswith(key))  # a repeat cut by the token cap
        if why := _why_dropped(title, key, seen):
            dropped[why] += 1
            return ""
        seen.add(_key(title))
        return title

    sections = []
    for top, below in tree:
        title = usable(top)
        subs = [usable(it) for it, lv in below if lv == 2 and lim.max_depth == 2]
        dropped["deep"] += sum(1 for _, lv in below if lv > lim.max_depth)
        if title:
            sections.append(Section(title, tuple(s for s in subs if s)))
    words, depth = lim.max_title_words, lim.max_depth
    notes.extend(
        f"dropped {n} {_WHY[k].format(words=words, depth=depth)}" for k, n in dropped.items() if n
    )
    return sections


def _cap(sections: list[Section], lim: OutlineLimits, notes: list[str]) -> tuple[Section, ...]:
    if len(sections) > lim.max_sections:
        notes.append(
            f"outline had {len(sections)} sections; kept the first {lim.max_sections} "
            f"(max_sections={lim.max_sections})"
        )
    kept = sections[: lim.max_sections]
    extra = sum(max(0, len(s.subsections) - lim.max_subsections) for s in kept)
    if extra:
        notes.append(f"dropped {extra} subsections beyond max_subsections={lim.max_subsections}")
    return tuple(Section(s.title, s.subsections[: lim.max_subsections]) for s in kept)


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

    def plan(self, question: str) -> Plan:
        stop = ("\n\n", f"\n{self.limits.max_sections + 3}.")  # list ended, or runs on
        node = _node("outline", self.outline_tokens, OUTLINE_PROMPT.format(topic=question))
        topic = (("topic", question),)  # bound here: nothing parses it back out of the prompt
        node = replace(node, expand="outline", prefix=OUTLINE_PREFIX, stop=stop, args=topic)
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
            parts.append(f"{'###' if '.' in num else '##'} {_label(num)} {title}")
            if leaf:
                parts.append(_body(texts.get(part_id(num, title)), title))
        parts += ["## Conclusion", _body(texts.get("conclusion"), "Conclusion")]
        return "\n\n".join(p for p in parts if p) + "\n"


def _node(
    nid: str, tokens: int, prompt: str, deps: Iterable[str] = (), stop: tuple[str, ...] = _STOP
) -> Node:
    return Node(nid, prompt, tuple(deps), tokens, "ngram", system=WRITER_SYSTEM, stop=stop)


def _label(num: str) -> str:
    return num if "." in num else f"{num}."


def part_id(num: str, title: str) -> str:
    """Node id of a (sub)section body: its number and a slug of its title."""
    slug = _KEY.sub("-", title.lower()).strip("-")[:32].rstrip("-")
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
    return line.startswith("#") or _key(line).startswith(_key(title)) and line[-1] not in ".!?"
