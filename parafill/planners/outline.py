"""The outline parser of the document planner: sections and subsections as small models really
write them (numbered, dotted, headings, bullets, letters), filtered (framing, repeats, sentences)
and capped by `OutlineLimits`. It plans nothing and does not judge content.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace


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
        return "\n".join(f"{'   ' * ('.' in n)}{label(n)} {t}" for n, t, _ in self.parts())


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
NON_ALNUM = re.compile(r"[^a-z0-9]+")
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


def title_key(title: str) -> str:
    return NON_ALNUM.sub(" ", title.lower()).strip()


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
    seen, dropped = {title_key(topic)}, dict.fromkeys(_WHY, 0)

    def usable(it: _Item) -> str:
        title = _title(it.title, lim.max_title_words)
        key = title_key(title)
        if it.cut and any(k.startswith(key) for k in seen):
            key = next(k for k in seen if k.startswith(key))  # a repeat cut by the token cap
        if why := _why_dropped(title, key, seen):
            dropped[why] += 1
            return ""
        seen.add(title_key(title))
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


def label(num: str) -> str:
    return num if "." in num else f"{num}."
