"""span_of: every output is a non-empty substring of the document (then the stop), the mask is
exactly the set of tokens that keep the text a substring, and a page compiles quickly."""

from __future__ import annotations

import time
from typing import Any

import pytest
from constraints_ref import sample, token_bytes

from parafill.constraints import (
    TokenizerInfo,
    allocate_bitmask,
    allowed_tokens,
    compile,
    span_of,
)

TWEET = "Heading to the Empire State Building with @jsmith before the Knicks game at MSG!"
WORDS = "council met Apple Google park near Central Station while Maria Lopez Paris plan".split()
PAGE = " ".join(WORDS[(i * 7) % len(WORDS)] for i in range(3000))  # ~20k characters


@pytest.mark.parametrize("seed", range(16))
@pytest.mark.parametrize("unit", ["words", "chars"])
def test_span_outputs_are_substrings(
    hf_tok: Any, info: TokenizerInfo, seed: int, unit: str
) -> None:
    m = compile(span_of(TWEET, unit=unit), info).matcher()  # type: ignore[arg-type]
    text = hf_tok.decode(sample(m, info, seed))
    assert text and text in TWEET, text


@pytest.mark.parametrize("seed", range(8))
def test_span_with_stop_ends_with_the_stop(hf_tok: Any, info: TokenizerInfo, seed: int) -> None:
    m = compile(span_of(TWEET, stop="\n"), info).matcher()
    text = hf_tok.decode(sample(m, info, seed))
    assert text.endswith("\n") and text[:-1] and text[:-1] in TWEET, text


@pytest.mark.parametrize("seed", range(4))
def test_page_sized_document(hf_tok: Any, info: TokenizerInfo, seed: int) -> None:
    t0 = time.perf_counter()
    m = compile(span_of(PAGE + f" seed{seed}"), info).matcher()
    assert time.perf_counter() - t0 < 5.0  # measured ~0.1 s; linear in the page
    text = hf_tok.decode(sample(m, info, seed))
    assert text and text in PAGE + f" seed{seed}", text


@pytest.mark.parametrize("prefix", ["", "Empire", " State Bu", "@js"])
def test_char_span_mask_is_exact(hf_tok: Any, info: TokenizerInfo, prefix: str) -> None:
    """After `prefix` (fed token by token), the allowed tokens are exactly those t with
    prefix + t a substring of the text; the end is allowed iff prefix is a non-empty span."""
    m = compile(span_of(TWEET, unit="chars"), info).matcher()
    assert m.accept_prefix(hf_tok.encode(prefix)) == len(hf_tok.encode(prefix))
    row = allocate_bitmask(1, info.n_vocab)[0]
    assert m.fill(row)
    doc, head = TWEET.encode(), prefix.encode()
    want = {i for i, b in token_bytes(hf_tok).items() if b and head + b in doc}
    if prefix:
        want |= set(info.eos_ids)
    assert set(allowed_tokens(row, info.n_vocab)) == want


def test_word_spans_start_and_end_on_words(hf_tok: Any, info: TokenizerInfo) -> None:
    m = compile(span_of(TWEET), info).matcher()
    whole = hf_tok.encode("Empire State Building")
    assert m.check_draft(whole) == len(whole)
    assert m.check_draft(hf_tok.encode("mpire")) == 0  # not the start of a word
    end = info.eos_ids[0]
    assert m.accept_prefix(hf_tok.encode("Empire")) == 2 and m.check_draft([end]) == 1
    assert m.accept(hf_tok.encode(" St")[0])  # the start of " State" ...
    assert m.check_draft([end]) == 0  # ... but not a whole word
    assert m.accept(hf_tok.encode("ate")[0]) and m.accept(end)
