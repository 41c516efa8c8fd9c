"""Regular expressions as GBNF, the grammar language of llama.cpp's server (`"grammar"` in a
request body), so that a regex constraint (the skeleton's numbered points, NER's counts, ...)
reaches llama-server and is enforced there as the local engine enforces it.

The regex is read with Python's own parser (`re._parser`) and written back as GBNF:
literals, character classes (ranges, negation, `\\d` `\\s` `\\w` as their ASCII classes), `.`
(any character but a newline), groups, alternation and every repetition (`?` `*` `+` `{m,n}`,
lazy ones as greedy: a grammar has no preference). The whole output must match, as with the
engine. Anchors, look-arounds, back-references and inline flags have no GBNF form and raise
ConstraintError; so does a negated `\\D` / `\\S` / `\\W` inside a class.

A group that holds other groups becomes a rule of its own (`g1 ::= ...`, one per distinct
body): llama.cpp refuses a group under a repetition (`?` included) once the rules made inside
it, times the repetition, pass 2000 (a skeleton continuation's trie of earlier points did),
and a body used in several places is written once.
"""

from __future__ import annotations

import re
from re import _constants as C  # type: ignore[attr-defined]
from re import _parser as P  # type: ignore[attr-defined]
from typing import Any, NoReturn

from parafill.constraints.spec import ConstraintError

_CATEGORY = {
    C.CATEGORY_DIGIT: [(ord("0"), ord("9"))],
    C.CATEGORY_SPACE: [(c, c) for c in b" \t\n\r\f\v"],
    C.CATEGORY_WORD: [(48, 57), (65, 90), (97, 122), (95, 95)],
}
_ATOMS = (C.LITERAL, C.NOT_LITERAL, C.ANY, C.IN, C.SUBPATTERN, C.BRANCH)


def regex_to_gbnf(pattern: str) -> str:
    """A GBNF grammar (`root ::= ...`) accepting exactly the strings `pattern` matches in full."""
    try:
        tree = P.parse(pattern)
    except re.error as exc:
        raise ConstraintError(f"not a valid regular expression ({exc}): {pattern!r}") from exc
    if tree.state.flags & ~(re.UNICODE | re.ASCII):
        _refuse(pattern, "inline flags")
    rules: dict[str, str] = {}  # body -> its rule's name
    root = _seq(list(tree), pattern, rules)
    return f"root ::= {root}\n" + "".join(f"{name} ::= {body}\n" for body, name in rules.items())


def _group(body: str, rules: dict[str, str]) -> str:
    """`body` as one item: in parentheses, or named as a rule when it holds groups itself (a
    "(" in a body only opens a group: strings and classes write it as a hex escape)."""
    return rules.setdefault(body, f"g{len(rules) + 1}") if "(" in body else f"({body})"


def _seq(items: list[tuple[Any, Any]], pattern: str, rules: dict[str, str]) -> str:
    parts: list[str] = []
    run = ""  # consecutive literals become one string
    for op, av in items:
        if op is C.LITERAL:
            run += _char(av, quoted=True)
            continue
        if run:
            parts, run = [*parts, f'"{run}"'], ""
        parts.append(_item(op, av, pattern, rules))
    if run:
        parts.append(f'"{run}"')
    return " ".join(parts) or '""'


def _item(op: Any, av: Any, pattern: str, rules: dict[str, str]) -> str:
    if op is C.LITERAL:
        return f'"{_char(av, quoted=True)}"'
    if op is C.NOT_LITERAL:
        return f"[^{_char(av)}]"
    if op is C.ANY:
        return "[^\\x0A]"
    if op is C.IN:
        return _class(av, pattern)
    if op is C.SUBPATTERN:
        _gid, add, remove, sub = av
        if add or remove:
            _refuse(pattern, "inline flags")
        inner = _seq(list(sub), pattern, rules)
        return inner if len(sub) == 1 and sub[0][0] is C.BRANCH else _group(inner, rules)
    if op is C.BRANCH:
        return _group(" | ".join(_seq(list(b), pattern, rules) for b in av[1]), rules)
    if op in (C.MAX_REPEAT, C.MIN_REPEAT, getattr(C, "POSSESSIVE_REPEAT", None)):
        low, high, sub = av
        body = _seq(list(sub), pattern, rules)
        single = len(sub) == 1 and sub[0][0] in _ATOMS and len(body) > 0
        atom = single and not (sub[0][0] is C.LITERAL and body.count('"') != 2)
        return (body if atom else _group(body, rules)) + _repeat(low, high)
    what = {C.AT: "anchors", C.GROUPREF: "back-references"}.get(op, f"{str(op).lower()} items")
    return _refuse(pattern, what)


def _repeat(low: int, high: int) -> str:
    if high is C.MAXREPEAT or high == C.MAXREPEAT:
        return {0: "*", 1: "+"}.get(low, f"{{{low},}}")
    if (low, high) == (0, 1):
        return "?"
    return f"{{{low}}}" if low == high else f"{{{low},{high}}}"


def _class(items: list[tuple[Any, Any]], pattern: str) -> str:
    negate = bool(items) and items[0][0] is C.NEGATE
    ranges: list[tuple[int, int]] = []
    for op, av in items[1:] if negate else items:
        if op is C.LITERAL:
            ranges.append((av, av))
        elif op is C.RANGE:
            ranges.append(av)
        elif op is C.CATEGORY and av in _CATEGORY:
            ranges.extend(_CATEGORY[av])
        else:
            _refuse(pattern, f"the class item {op} {av}")
    body = "".join(_char(a) if a == b else f"{_char(a)}-{_char(b)}" for a, b in ranges)
    return f"[{'^' if negate else ''}{body}]"


def _char(code: int, quoted: bool = False) -> str:
    """One character as GBNF writes it inside a string or a class: letters and digits (and a
    space, in a string) as they are, everything else as a hex escape (no character of the
    grammar's own syntax leaks)."""
    ch = chr(code)
    if ch.isascii() and (ch.isalnum() or (quoted and ch == " ")):
        return ch
    if code <= 0xFF:
        return f"\\x{code:02X}"
    return f"\\u{code:04X}" if code <= 0xFFFF else f"\\U{code:08X}"


def _refuse(pattern: str, what: str) -> NoReturn:
    raise ConstraintError(f"{what} have no GBNF form; cannot send {pattern!r} to llama.cpp")
