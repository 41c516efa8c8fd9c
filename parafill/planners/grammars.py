"""Output constraints for the planners' own nodes, so a plan always parses on a backend that
applies them (the local engine): the skeleton's numbered points, the DAG planner's steps with
`$k` references to earlier steps only, the document outline, NER counts and mentions.

Each describes the model's continuation after the node's prefill ("1." for skeleton and steps,
"Table of contents:\\n\\n1." for outlines) in exactly the format the free-text parsers read;
those parsers still parse the output (and remain for backends without constraints). Lengths are
bounded: a grammar guarantees syntax, and a small model otherwise loops inside a line. A grammar
cannot forbid repeated items; the parsers still drop those.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # parafill.constraints imports torch: imported below only when used
    from parafill.constraints.spec import Constraint
    from parafill.planners.outline import OutlineLimits

POINT_CHARS = 70  # a skeleton point: 3-5 words asked, 12 kept by the parser
POINT_WORDS = 12
# banned points are told apart by their first BAN_CHARS characters at most: each character
# nests the regex one level deeper, and llguidance refuses regexes nested past ~55 characters;
# a point that starts with a longer banned one's first BAN_CHARS characters is refused
BAN_CHARS = 48
STEP_CHARS = 120
TITLE_CHARS = 60
_END = '("\\n\\n")?'  # Lark: a list may end with the blank line the model writes after it
# Rust-regex metacharacters (llguidance): escaped when a text is quoted into a regex
NON_WORD = re.compile(r"[^a-z0-9]+")  # how the outline parser compares titles
_META = set(r"\.+*?()|[]{}^$#&-~/")


def quote(text: str) -> str:
    """`text` as a literal inside a Rust regex (llguidance's regex syntax)."""
    return "".join(f"\\{c}" if c in _META else c for c in text)


def chain(parts: list[str], least: int, lark: bool = False) -> str:
    """The first `least` parts, then each later part only after the one before it (a regex,
    or a Lark rule body whose parts are separated by spaces)."""
    sep = " " if lark else ""
    tail = ""
    for part in reversed(parts[least:]):
        inner = sep.join(p for p in (part, tail) if p)
        tail = f"({inner})?" if lark else f"(?:{inner})?"
    return sep.join(p for p in (*parts[:least], tail) if p)


def skeleton_constraint(
    max_points: int, min_points: int = 2, first: int = 1, banned: Iterable[str] = ()
) -> Constraint:
    """Numbered points first..max_points of one short line each (after the prefilled "first."),
    at least min_points in all (counting the first-1 already written). A point whose parsed text
    would be one of `banned` (an earlier point, compared as the parser compares) is refused."""
    from parafill.constraints.spec import regex

    banned = tuple(banned)
    point = unbanned_point(banned) if banned else rf"[A-Za-z0-9][^\n*#`]{{1,{POINT_CHARS}}}"
    least = max(1, min_points - first + 1)
    parts = [" " + point] + [rf"\n{k}\. {point}" for k in range(first + 1, max_points + 1)]
    return regex(chain(parts, least) + r"(?:\n\n)?")


# not in a skeleton point after its first character; with repeats refused not `_` either
# (markup the parser drops: "Iron Man_" would read as "Iron Man")
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_NOT_POINT = "\n*#`_"
# what the parser strips from a point's end or cuts it at ("Head: more", "First. Second")
_TRIM = " .;:-\u2013\u2014\"'!?"


def _class(chars: Iterable[str], negate: bool = False) -> str:
    body = "".join(dict.fromkeys("\\n" if c == "\n" else quote(c) for c in chars))
    return f"[^{body}]" if negate else (f"[{body}]" if body else "")


def _cases(c: str) -> list[str]:
    up = c.upper()
    return [c, up] if len(up) == 1 and up != c else [c]


def _rest(used: int) -> str:
    """Free point characters after `used` of them (a point is 2..POINT_CHARS+1 long)."""
    low, high = max(0, 2 - used), POINT_CHARS + 1 - used
    return "" if high <= 0 else _class(_NOT_POINT, True) + f"{{{low},{high}}}"


class _Trie(dict[str, "_Trie"]):
    end = False  # a banned point ends here
    dead = False  # the first BAN_CHARS characters of a longer banned point end here
    words = 0


def unbanned_point(banned: Iterable[str]) -> str:
    """A regex for one skeleton point (`[A-Za-z0-9][^\\n*#`]{1,70}`, no `_`) whose parsed text
    (`skeleton._clean`, compared case-insensitively) is none of `banned`: a trie of the banned
    texts, leaving each at a character it does not have. After a whole banned text only a
    character the parser keeps may follow (not the end, ':', '. ', a trailing '.', ...), so
    the grammar can refuse a few distinct points ("Iron Man - the hero"); it never admits a
    repeat, except one of over 12 words written with doubled spaces (the parser drops that).
    A banned text longer than BAN_CHARS characters refuses every point that starts with its
    first BAN_CHARS (a regex spelling it whole would nest too deep to compile)."""
    root = _Trie()
    for text in banned:
        key = text.lower()
        if not key or key[0] not in _ALNUM or any(c in _NOT_POINT for c in key):
            continue  # no point can be parsed as this text
        node = root
        for c in key[:BAN_CHARS]:
            node = node.setdefault(c, _Trie())
        if len(key) > BAN_CHARS:
            node.dead = True  # nothing may follow its first BAN_CHARS characters
        else:
            node.end, node.words = True, len(key.split())
    return _after(root, 0, False) or ""


def _after(node: _Trie, used: int, tight: bool) -> str | None:
    """The rest of a point after `used` characters that spelled the path to `node`; `tight`:
    the parser would read what is written so far as a banned text if it ended here."""
    if node.dead:
        return None
    tight = tight or node.end
    kids = [c for c in node if used < POINT_CHARS + 1]
    taken = [x for c in kids for x in _cases(c)]
    alts = []
    for c in kids:
        then = _after(node[c], used + 1, tight and c in _TRIM)
        if then is not None:  # None: every way on from there spells a banned text
            alts.append(_class(_cases(c)) + then)
    if used == 0:
        first = _class(c for c in _ALNUM if c not in taken)
        alts.append(first + _rest(1))
    elif tight:
        safe = _class((*_NOT_POINT, *_TRIM, *taken), True)
        alts.append(safe + _rest(used + 1))
        long = node.words >= POINT_WORDS  # a further word would be cut off by the parser
        joins = [c for c in " '-" if c not in taken and not (c == " " and long)]
        if joins and used + 2 <= POINT_CHARS + 1:
            alts.append(_class(joins) + _class(_ALNUM) + _rest(used + 2))
    elif used <= POINT_CHARS:
        alts.append(_class((*_NOT_POINT, *taken), True) + _rest(used + 1))
    body = "|".join(a for a in alts if a)
    may_end = used >= 2 and not tight
    if not body:
        return "" if may_end else None
    return f"(?:{body})" + ("?" if may_end else "")


def step_body(k: int, literal: Iterable[str] = ()) -> str:
    """Step k's text: starts with a letter; `$j` only for earlier steps j < k, or one of the
    question's own `$n` amounts (`literal`), never followed by a digit (`$12` would name step
    12); no other `$` (a model wrote "$1,0000" as a money-shaped reference) and no `#E`/`${}`."""
    dollars = [rf"\$[1-{k - 1}]"] if k > 1 else []
    dollars += [quote(x) for x in sorted(set(literal))]
    if not dollars:
        return rf"[A-Za-z][^\n$#]{{0,{STEP_CHARS}}}"
    d = "|".join(dollars)
    item = rf"[^\n$#]|(?:{d})[^\n$#0-9]"
    return rf"[A-Za-z](?:{item}){{0,{STEP_CHARS}}}(?:{d})?"


def steps_constraint(
    max_steps: int,
    min_steps: int = 2,
    banned: Iterable[str] = (),
    literal: Iterable[str] = (),
    first: int = 1,
) -> Constraint:
    """Numbered steps first..max (after the prefilled "first.", at least min_steps in all,
    counting the first-1 already written) whose references name earlier steps only; no step's
    text is one of `banned` (case-insensitive: the few-shot example's steps, earlier steps)."""
    parts = [f'" " S{first}'] + [f'"\\n{k}. " S{k}' for k in range(first + 1, max_steps + 1)]
    unless = _unless(quote(b) for b in banned)
    literal = tuple(literal)
    terms = [f"S{k}: /{step_body(k, literal)}/{unless}" for k in range(first, max_steps + 1)]
    least = max(1, min_steps - first + 1)
    from parafill.constraints.spec import grammar

    return grammar("\n".join([f"start: {chain(parts, least, True)} {_END}", *terms]))


def _unless(alternatives: Iterable[str]) -> str:
    """A Lark terminal suffix that refuses whole lexemes matching any alternative."""
    words = "|".join(alternatives)
    return f" & ~/(?i:\\s*(?:{words})\\s*)/" if words else ""


def outline_constraint(
    limits: OutlineLimits, topic: str = "", framing: Iterable[str] = ()
) -> Constraint:
    """min..max numbered sections (after the prefilled "1."), each with up to max_subsections
    "k.j" subsections (when max_depth is 2). A title starts with a letter and is neither the
    topic itself nor made only of `framing` words (Introduction, Overview: written apart)."""
    parts = []
    for k in range(1, limits.max_sections + 1):
        head = '" " T' if k == 1 else f'"\\n{k}. " T'
        depth = limits.max_subsections if limits.max_depth == 2 else 0
        subs = [f'"\\n   {k}.{j} " T' for j in range(1, depth + 1)]
        parts.append(" ".join(p for p in (head, chain(subs, 0, True)) if p))
    words = "|".join(sorted(framing))
    # no ':' either: the parser keeps only the head of "Introduction: a long sentence", and
    # refusing that shape by negation made llguidance's lexer too complex
    title = rf"/[A-Za-z][^\n*#:]{{1,{TITLE_CHARS}}}/"
    if words:
        word = f"(?:{words})s?"
        title += rf" & ~/(?i:[^a-z0-9]*{word}(?:[^a-z0-9]+{word})*[^a-z0-9]*)/"
    topic_words = NON_WORD.sub(" ", topic.lower()).split()
    if 0 < len(topic_words) <= 12:  # a long topic would make the lexer too complex
        title += rf" & ~/(?i:[^a-z0-9]*{'[^a-z0-9]+'.join(topic_words)}[^a-z0-9]*)/"
    start = f"start: {chain(parts, limits.min_sections, True)} {_END}"
    from parafill.constraints.spec import grammar

    return grammar(f"{start}\nT: {title}\n")


def mention_constraint(text: str) -> Constraint:
    """An NER mention: a span of the document on word boundaries, then the end of the output.
    No stop literal: the model ends a mention with its end token (as the adapter was trained);
    a required "\n" made it run on past the mention ("Empire State Building = ESB")."""
    from parafill.constraints.spec import span_of

    return span_of(text, unit="words")


def count_constraint() -> Constraint:
    """An NER count: a number (the parser reads the first one)."""
    from parafill.constraints.spec import regex

    return regex(r"0|[1-9][0-9]?")


ANSWER_CHARS = 60


def answer_constraint(body_chars: int) -> Constraint:
    """A reasoning branch: up to `body_chars` of free reasoning, then a line "The answer is ..."
    (what the vote reads first), then the end: the vote always has a committed answer."""
    from parafill.constraints.spec import regex

    body = rf"(?s:.{{0,{body_chars}}})"
    return regex(rf"{body}\n?The answer is [^\n]{{1,{ANSWER_CHARS}}}")
