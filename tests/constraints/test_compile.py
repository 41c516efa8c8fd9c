"""Compiling: clear ConstraintErrors for bad input, and the LRU cache returns the same object."""

from __future__ import annotations

from typing import Any

import pytest

from parafill.constraints import (
    ConstraintError,
    TokenizerInfo,
    compile,
    grammar,
    json_object,
    json_schema,
    regex,
    span_of,
    tokenizer_info,
)


def test_cache_returns_the_same_compiled(hf_tok: Any, info: TokenizerInfo) -> None:
    a = compile(json_schema({"type": "object", "required": ["x"]}), info)
    b = compile(json_schema('{"required": ["x"], "type": "object"}'), info)  # same schema
    assert a is b
    assert compile(json_object(), info) is compile(json_object(), info)
    assert compile(regex("a+"), info) is not compile(regex("b+"), info)


def test_cache_keys_on_the_vocabulary_not_the_object(hf_tok: Any, info: TokenizerInfo) -> None:
    again = tokenizer_info(hf_tok)
    assert again == info and again is not info
    assert compile(regex("x"), again) is compile(regex("x"), info)
    other_end = tokenizer_info(hf_tok, eos_ids=[0])
    assert other_end != info


@pytest.mark.parametrize(
    ("constraint", "reason"),
    [
        (lambda: regex("(ab"), "regex"),
        (lambda: regex("[z-a]"), "regex"),
        (lambda: grammar("start: foo\n"), "foo"),
        (lambda: grammar("root ::= ("), ""),
        (lambda: json_schema({"type": "object", "$ref": "#/$defs/missing"}), "missing"),
        (lambda: json_schema({"type": "strnig"}), "strnig"),
        (lambda: json_schema("{not json"), "not valid JSON"),
        (lambda: json_schema("[1, 2]"), "must be an object"),
        (lambda: span_of("   "), "non-empty"),
    ],
)
def test_bad_constraints_raise_clear_errors(
    info: TokenizerInfo, constraint: Any, reason: str
) -> None:
    with pytest.raises(ConstraintError, match=reason) as err:
        compile(constraint(), info)
    assert len(str(err.value)) > 20


@pytest.mark.parametrize(
    ("schema", "reason"),
    [
        ({"type": "string", "format": "no-such-format"}, "Unknown format: no-such-format"),
        ({"type": "object", "unevaluatedProperties": False}, "unevaluatedProperties"),
    ],
)
def test_unsupported_schema_feature_is_named(
    info: TokenizerInfo, schema: dict[str, Any], reason: str
) -> None:
    with pytest.raises(ConstraintError, match=reason):
        compile(json_schema(schema), info)


def test_error_message_does_not_dump_a_document(info: TokenizerInfo) -> None:
    with pytest.raises(ConstraintError) as err:
        compile(regex("(" + "a" * 5000), info)
    assert len(str(err.value)) < 1000
