"""`TokenizerInfo`: the grammar library's view of a tokenizer, built once from a local HF one.

Building it walks the whole vocabulary (about a second for 49k tokens), so callers keep one per
model; two infos are equal when their key (tokenizer name, vocabulary size, end ids) is, which is
what the compile cache keys on. Nothing here reaches the network.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import llguidance
import llguidance.hf


@dataclass(frozen=True)
class TokenizerInfo:
    """`n_vocab` is the logits width the bitmask covers (may exceed the tokenizer's own size);
    `eos_ids` are the ids that end a constrained output (allowed once the output is complete)."""

    key: str
    n_vocab: int
    eos_ids: tuple[int, ...]
    lib: Any = field(compare=False, repr=False)  # llguidance.LLTokenizer


def tokenizer_info(
    hf_tokenizer: Any, n_vocab: int | None = None, eos_ids: Sequence[int] | None = None
) -> TokenizerInfo:
    """From a fast HF tokenizer; `eos_ids` default to the tokenizer's eos token."""
    n = n_vocab if n_vocab is not None else len(hf_tokenizer)
    if eos_ids is None:
        eos_ids = [] if hf_tokenizer.eos_token_id is None else [int(hf_tokenizer.eos_token_id)]
    if not eos_ids:
        raise ValueError("a tokenizer info needs at least one end-of-sequence id")
    ids = tuple(int(i) for i in eos_ids)
    lib = llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=n, eos_token=list(ids))
    return TokenizerInfo(key=_fingerprint(hf_tokenizer), n_vocab=n, eos_ids=ids, lib=lib)


def _fingerprint(hf_tokenizer: Any) -> str:
    """The vocabulary's hash: same tokens at the same ids means the same compiled grammars."""
    vocab = sorted(hf_tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    digest = hashlib.sha256("\n".join(f"{i}\t{t}" for t, i in vocab).encode()).hexdigest()
    return f"{len(vocab)}:{digest[:16]}"
