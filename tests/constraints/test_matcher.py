"""Matcher state: exact masks for a small regex, accept / rollback / draft checks restore the
state, refused tokens change nothing, and a finished matcher allows nothing more."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from constraints_ref import token_bytes

from parafill.constraints import (
    TokenizerInfo,
    allocate_bitmask,
    allowed_tokens,
    compile,
    json_schema,
    regex,
)

WORDS = ("cat", "cats", "dog", "dogs", "horse", "horses")
SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}


def _mask(m: Any, info: TokenizerInfo) -> torch.Tensor:
    row = allocate_bitmask(1, info.n_vocab)[0]
    m.fill(row)
    return row


@pytest.mark.parametrize("prefix", ["", "c", "ca", "cat", "hor", "horses"])
def test_regex_mask_is_exact(hf_tok: Any, info: TokenizerInfo, prefix: str) -> None:
    """Allowed = tokens t with prefix + t a prefix of some match; the end iff a full match."""
    m = compile(regex("(cat|dog|horse)s?"), info).matcher()
    assert m.accept_prefix(hf_tok.encode(prefix)) == len(hf_tok.encode(prefix))
    want = {
        i
        for i, b in token_bytes(hf_tok).items()
        if b and any(w.encode().startswith(prefix.encode() + b) for w in WORDS)
    }
    if re.fullmatch("(cat|dog|horse)s?", prefix):
        want |= set(info.eos_ids)
    assert set(allowed_tokens(_mask(m, info), info.n_vocab)) == want


def test_rollback_restores_the_mask(hf_tok: Any, info: TokenizerInfo) -> None:
    tokens = hf_tok.encode('{"a": "hello world"}')
    m = compile(json_schema(SCHEMA), info).matcher()
    for k, t in enumerate(tokens):
        before = _mask(m, info)
        assert m.accept(t)
        after = _mask(m, info)
        m.rollback(1)
        assert torch.equal(_mask(m, info), before), k
        assert m.accept(t) and torch.equal(_mask(m, info), after)
    assert m.consumed == len(tokens)
    m.rollback(len(tokens))
    assert torch.equal(_mask(m, info), _mask(compile(json_schema(SCHEMA), info).matcher(), info))


def test_refused_token_changes_nothing(hf_tok: Any, info: TokenizerInfo) -> None:
    m = compile(json_schema(SCHEMA), info).matcher()
    assert m.accept_prefix(hf_tok.encode('{"a"')) == len(hf_tok.encode('{"a"'))
    before = _mask(m, info)
    bad = hf_tok.encode("}")[0]
    assert not m.accept(bad)
    assert m.error() is None and torch.equal(_mask(m, info), before)
    assert m.accept_prefix(hf_tok.encode(': "x"}')) == len(hf_tok.encode(': "x"}'))
    assert m.is_accepting() and m.is_terminated()  # nothing may follow the closed object


def test_check_draft_counts_and_does_not_move(hf_tok: Any, info: TokenizerInfo) -> None:
    m = compile(json_schema(SCHEMA), info).matcher()
    good = hf_tok.encode('{"a": "b"}')
    before = _mask(m, info)
    assert m.check_draft(good) == len(good)
    assert m.check_draft(good[:2] + hf_tok.encode("]]") + good[2:]) == 2
    assert m.consumed == 0 and torch.equal(_mask(m, info), before)
    assert m.accept_prefix(good[:3] + hf_tok.encode("]]")) == 3
    m.rollback(3)
    assert torch.equal(_mask(m, info), before)


def test_fork_is_independent(hf_tok: Any, info: TokenizerInfo) -> None:
    m = compile(json_schema(SCHEMA), info).matcher()
    m.accept_prefix(hf_tok.encode('{"a": "'))
    f = m.fork()
    assert f.consumed == m.consumed and torch.equal(_mask(f, info), _mask(m, info))
    f.accept_prefix(hf_tok.encode('x"}'))
    assert f.is_accepting() and not m.is_accepting()


@pytest.mark.parametrize("pattern", ["cat", "cat|cats"])
def test_end_token_after_a_complete_output(hf_tok: Any, info: TokenizerInfo, pattern: str) -> None:
    """Whether or not anything could follow, the end is allowed, accepted and rolled back."""
    m = compile(regex(pattern), info).matcher()
    cat, end = hf_tok.encode("cat"), info.eos_ids[0]
    assert m.check_draft(cat + [end]) == 2
    assert m.accept_prefix(cat) == 1 and m.is_accepting()
    assert set(allowed_tokens(_mask(m, info), info.n_vocab)) >= {end}
    assert m.accept(end) and m.is_terminated() and m.consumed == 2
    assert not m.accept(end)
    m.rollback(1)
    assert m.consumed == 1 and m.check_draft([end]) == 1
    m.rollback(1)
    assert m.check_draft(cat + [end]) == 2 and not m.is_terminated()


def test_a_matcher_in_error_allows_nothing(hf_tok: Any, info: TokenizerInfo) -> None:
    """The library's own error state (resource limits, misuse) reads as "no token allowed"."""
    m = compile(regex("cat"), info).matcher()
    m.lib.consume_token(hf_tok.encode("dog")[0])  # the raw library call: enters its error state
    assert m.error() and not m.fill(allocate_bitmask(1, info.n_vocab)[0])


def test_rollback_past_the_start_is_refused(info: TokenizerInfo) -> None:
    m = compile(regex("cat"), info).matcher()
    with pytest.raises(ValueError, match="cannot roll back 1"):
        m.rollback(1)
