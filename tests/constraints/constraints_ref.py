"""Helpers for the constraint tests: sampling only allowed tokens from random logits, and each
token's bytes read independently of the grammar library."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from parafill.constraints import Matcher, TokenizerInfo, allocate_bitmask, apply_bitmask


def sample(
    m: Matcher, info: TokenizerInfo, seed: int, max_steps: int = 400, closers: Sequence[int] = ()
) -> list[int]:
    """Random logits, masked, then sampled, until the matcher ends (end token accepted). The end
    and `closers` get a bonus growing with the length, so unbounded rules still finish. Returns
    the tokens, end excluded."""
    gen = torch.Generator().manual_seed(seed)
    row = allocate_bitmask(1, info.n_vocab)
    out: list[int] = []
    for _ in range(max_steps):
        assert m.fill(row[0]), m.error()
        logits = torch.randn(1, info.n_vocab, generator=gen) * 3
        logits[0, [*info.eos_ids, *closers]] += len(out) / 4
        apply_bitmask(logits, row)
        token = int(torch.multinomial(logits.softmax(-1)[0], 1, generator=gen))
        assert m.accept(token)
        if token in info.eos_ids:
            assert m.is_terminated()
            return out
        out.append(token)
    raise AssertionError(f"no end after {max_steps} steps: {out[-20:]}")


def token_bytes(hf_tok: Any) -> dict[int, bytes]:
    """Each plain token's bytes, from the HF byte-level vocabulary (independent of the library)."""
    dec = {c: b for b, c in _bytes_to_unicode().items()}
    special = set(hf_tok.all_special_ids) | set(hf_tok.added_tokens_decoder)
    return {
        i: bytes(dec[c] for c in tok)
        for tok, i in hf_tok.get_vocab().items()
        if i not in special and all(c in dec for c in tok)
    }


def closing_tokens(hf_tok: Any, chars: str) -> list[int]:
    """The plain tokens made only of `chars` (to make random JSON close its strings, arrays
    and objects)."""
    return [
        i for i, b in token_bytes(hf_tok).items() if b and set(b.decode("latin-1")) <= set(chars)
    ]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: printable bytes stand for themselves, the rest are shifted
    past 255 (the mapping SmolLM2's vocabulary is written in)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out
