"""`Limits`: what an engine can hold and do, as it states them (`Engine.limits`,
`FallbackEngine.limits`), so layers above (the local backend, the server, `parafill serve`)
check requests and report sizes without reaching into caches, rotary tables or HF configs.
A value only: each engine's `submit` still enforces the same bounds itself.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    vocab: int  # the model's token ids: 0..vocab-1
    max_positions: int  # positions the model is set up for (its rotary table)
    max_request_tokens: int  # prompt + max_tokens that one request may hold (KV and positions)
    kv_rows: int  # the KV cache's rows (rows mode: one per concurrent sequence; else 1)
    kv_row_tokens: int  # KV slots in one row
    kv_bytes: int | None  # the preallocated K/V; None: caches grow per request (HF fallback)
    max_seqs: int  # sequences decoded at once
    packs: bool  # concurrent sequences share forward passes and prefilled prefixes
    speculates: bool  # verifies drafted tokens (a request's filler proposes them)

    @property
    def kv_tokens(self) -> int:
        """KV slots in all."""
        return self.kv_rows * self.kv_row_tokens
