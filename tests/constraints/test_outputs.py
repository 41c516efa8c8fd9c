"""Every constrained output is valid: sampled from random logits over many seeds, the text
validates against its JSON schema, matches its regex in full, or parses with its grammar."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import pytest
from constraints_ref import closing_tokens, sample

from parafill.constraints import TokenizerInfo, compile, grammar, json_object, json_schema, regex

SEEDS = range(12)

SCHEMA = {
    "type": "object",
    "properties": {
        "points": {
            "type": "array",
            "minItems": 2,
            "maxItems": 4,
            "items": {"type": "string", "maxLength": 12},
        },
        "count": {"type": "integer", "minimum": 0, "maximum": 99},
        "kind": {"enum": ["outline", "dag"]},
        "done": {"type": "boolean"},
    },
    "required": ["points", "count", "kind", "done"],
    "additionalProperties": False,
}

LARK = r"""start: item item+
item: NUM ". " WORDS "\n"
NUM: /[1-9]/
WORDS: /[a-z]{1,8}( [a-z]{1,8}){0,3}/
"""


def _text(hf_tok: Any, tokens: list[int]) -> str:
    return str(hf_tok.decode(tokens))


@pytest.mark.parametrize("seed", SEEDS)
def test_json_schema_outputs_validate(hf_tok: Any, info: TokenizerInfo, seed: int) -> None:
    compiled = compile(json_schema(SCHEMA), info)
    text = _text(hf_tok, sample(compiled.matcher(), info, seed))
    jsonschema.validate(json.loads(text), SCHEMA)


@pytest.mark.parametrize("seed", SEEDS)
def test_json_object_outputs_parse_to_objects(hf_tok: Any, info: TokenizerInfo, seed: int) -> None:
    compiled = compile(json_object(), info)
    closers = closing_tokens(hf_tok, '"}]')
    text = _text(hf_tok, sample(compiled.matcher(), info, seed, max_steps=600, closers=closers))
    assert isinstance(json.loads(text), dict)


@pytest.mark.parametrize("seed", SEEDS)
def test_regex_outputs_match_in_full(hf_tok: Any, info: TokenizerInfo, seed: int) -> None:
    pattern = r"(19|20)\d\d-(0[1-9]|1[0-2])-[0-2]\d( [A-Z][a-z]{1,6}){1,3}"
    text = _text(hf_tok, sample(compile(regex(pattern), info).matcher(), info, seed))
    assert re.fullmatch(pattern, text), text


@pytest.mark.parametrize("seed", SEEDS)
def test_lark_grammar_outputs_parse_with_lark(hf_tok: Any, info: TokenizerInfo, seed: int) -> None:
    lark = pytest.importorskip("lark")
    text = _text(hf_tok, sample(compile(grammar(LARK), info).matcher(), info, seed))
    lark.Lark(LARK, parser="earley").parse(text)


@pytest.mark.parametrize("seed", SEEDS[:4])
def test_gbnf_grammar_outputs_match(hf_tok: Any, info: TokenizerInfo, seed: int) -> None:
    gbnf = 'root ::= "- " [a-z]+ ("\\n- " [a-z]+)*'
    text = _text(hf_tok, sample(compile(grammar(gbnf), info).matcher(), info, seed))
    assert re.fullmatch(r"- [a-z]+(\n- [a-z]+)*", text), text
