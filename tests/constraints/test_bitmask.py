"""Batched fill equals one fill per matcher; draft masks equal the masks after accepting each
draft prefix; apply_bitmask equals a per-row reference."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from parafill.constraints import (
    TokenizerInfo,
    allocate_bitmask,
    allowed_tokens,
    apply_bitmask,
    compile,
    fill_batch,
    fill_batch_drafts,
    json_schema,
    regex,
)

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
TEXTS = ['{"n": 12}', '{"n": 3', '{"', "", '{"n": -45}']


def _matchers(hf_tok: Any, info: TokenizerInfo) -> list[Any]:
    ms = []
    for text in TEXTS:
        m = compile(json_schema(SCHEMA), info).matcher()
        m.accept_prefix(hf_tok.encode(text))
        ms.append(m)
    return ms


def test_fill_batch_equals_single_fills(hf_tok: Any, info: TokenizerInfo) -> None:
    ms = _matchers(hf_tok, info)
    batch = allocate_bitmask(len(ms) + 2, info.n_vocab)
    ok = fill_batch(ms, batch, rows=[2 + i for i in range(len(ms))])
    assert ok == [True] * len(ms)
    assert torch.equal(batch[:2], allocate_bitmask(2, info.n_vocab))  # rows not named: untouched
    for i, m in enumerate(ms):
        one = allocate_bitmask(1, info.n_vocab)
        m.fill(one[0])
        assert torch.equal(one[0], batch[2 + i])


def test_fill_batch_reports_dead_rows(hf_tok: Any, info: TokenizerInfo) -> None:
    done = compile(regex("ok"), info).matcher()
    done.lib.consume_token(hf_tok.encode("no")[0])  # the library's error state
    live = compile(regex("ok"), info).matcher()
    assert fill_batch([live, done], allocate_bitmask(2, info.n_vocab)) == [True, False]


def test_draft_masks_equal_masks_after_each_prefix(hf_tok: Any, info: TokenizerInfo) -> None:
    ms = _matchers(hf_tok, info)[2:4]  # after '{"' and at the start
    drafts = [hf_tok.encode('n": 7}'), hf_tok.encode('{"n": x}')]
    rows = [0, len(drafts[0]) + 1]
    bitmask = allocate_bitmask(rows[1] + len(drafts[1]) + 1, info.n_vocab)
    counts = fill_batch_drafts(list(zip(ms, rows, drafts, strict=True)), bitmask)
    assert counts == [len(drafts[0]), drafts[1].index(hf_tok.encode(" x")[0])]
    for m, r, d, n in zip(ms, rows, drafts, counts, strict=True):
        assert m.consumed == len(hf_tok.encode(TEXTS[ms.index(m) + 2]))  # did not move
        for j in range(n + 1):
            one = allocate_bitmask(1, info.n_vocab)
            m.fill(one[0])
            assert torch.equal(one[0], bitmask[r + j]), (r, j)
            if j < n:
                assert m.accept(d[j])
        m.rollback(n)
        assert (bitmask[r + n + 1 : r + len(d) + 1] == -1).all()


@pytest.mark.parametrize("n_vocab", [49152, 49152 + 7, 70])
def test_apply_bitmask_matches_a_reference(n_vocab: int) -> None:
    gen = torch.Generator().manual_seed(n_vocab)
    words = (n_vocab + 31) // 32
    bitmask = torch.randint(-(2**31), 2**31 - 1, (3, words), generator=gen, dtype=torch.int32)
    logits = torch.randn(3, n_vocab + 5, generator=gen)  # wider than the mask: extra columns
    want = torch.full_like(logits, float("-inf"))
    for r in range(3):
        keep = allowed_tokens(bitmask[r], logits.shape[1])  # bits past the vocab count
        want[r, keep] = logits[r, keep]
    got = logits.clone()
    apply_bitmask(got, bitmask)
    assert torch.equal(got, want)


def test_apply_bitmask_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="bitmask"):
        apply_bitmask(torch.zeros(2, 64), torch.zeros(3, 2, dtype=torch.int32))
