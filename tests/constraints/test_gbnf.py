"""Regexes as GBNF for llama.cpp's server: the grammar text written for each regex construct,
and refusals for what GBNF cannot say. That the grammars mean what the regexes mean is tested
against the real llama-server in tests/backends/test_openai_constraints.py."""

from __future__ import annotations

import pytest

from parafill.constraints.gbnf import regex_to_gbnf
from parafill.constraints.spec import ConstraintError
from parafill.planners.grammars import skeleton_constraint


@pytest.mark.parametrize(
    ("regex", "gbnf"),
    [
        ("abc", 'root ::= "abc"'),
        ("a b", 'root ::= "a b"'),
        (r"\.\n\"", r'root ::= "\x2E\x0A\x22"'),
        ("[a-z0-9_]", "root ::= [a-z0-9\\x5F]"),
        (r"[^\n*#`-]", r"root ::= [^\x0A\x2A\x23\x60\x2D]"),
        (r"\d+\s*\w?", r"root ::= [0-9]+ [\x20\x09\x0A\x0D\x0C\x0B]* [0-9A-Za-z\x5F]?"),
        ("x{3}y{2,5}z{4,}", 'root ::= "x"{3} "y"{2,5} "z"{4,}'),
        ("(?:ab)*?c+?", 'root ::= ("ab")* "c"+'),
        ("(yes|no), ok", 'root ::= ("yes" | "no") "\\x2C ok"'),
        ("a|bc|", 'root ::= ("a" | "bc" | "")'),
        (".", "root ::= [^\\x0A]"),
        ("é€😀", 'root ::= "\\xE9\\u20AC\\U0001F600"'),
        ("", 'root ::= ""'),
    ],
)
def test_regex_constructs(regex: str, gbnf: str) -> None:
    assert regex_to_gbnf(regex) == gbnf + "\n"


def test_the_skeleton_regex_becomes_nested_optional_points() -> None:
    got = regex_to_gbnf(skeleton_constraint(4, min_points=2).source)
    point = r"[A-Za-z0-9] [^\x0A\x2A\x23\x60]{1,70}"
    assert got == (
        f'root ::= " " {point} "\\x0A2\\x2E " {point} g1? ("\\x0A\\x0A")?\n'
        f'g1 ::= "\\x0A3\\x2E " {point} ("\\x0A4\\x2E " {point})?\n'
    )


def test_nested_groups_become_rules_written_once() -> None:
    """llama.cpp refuses a repeated group that made over 2000 rules inside it; a skeleton
    continuation (a trie of the earlier points, under 8 nested optional points) did."""
    got = regex_to_gbnf("(?:a(?:bb|cc)?)?x(?:a(?:bb|cc)?)?")
    assert got == 'root ::= g1? "x" g1?\ng1 ::= "a" ("bb" | "cc")?\n'
    big = skeleton_constraint(8, 2, 2, [f"Point number {k} of the list" for k in range(7)])
    root = regex_to_gbnf(big.source).splitlines()[0]
    assert root.count("g") < 20  # the trie is written once, not once per numbered point


@pytest.mark.parametrize(
    ("regex", "why"),
    [
        ("^a$", "anchors"),
        (r"(a)\1", "back-references"),
        ("a(?=b)", "assert"),
        ("(?i)abc", "inline flags"),
        (r"[^\D]", "class item"),
        ("a(", "not a valid regular expression"),
    ],
)
def test_what_gbnf_cannot_say_is_refused(regex: str, why: str) -> None:
    with pytest.raises(ConstraintError, match=why):
        regex_to_gbnf(regex)
