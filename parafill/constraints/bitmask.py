"""The token bitmask of one decode step: allocate it, fill it for many matchers at once, apply
it to logits on their device.

Layout (llguidance's and xgrammar's): an int32 tensor (rows, ceil(vocab/32)); token t is allowed
in a row when bit t % 32 of word t // 32 is set. Filling runs on the CPU in the library's thread
pool (one call per step, no Python loop over tokens); applying is a few tensor ops, no loop over
rows, so it can sit inside a compiled / CUDA-graph step.

The executor's mask calls are made directly, not through `llguidance.torch`: importing that
module wraps a kernel in `torch.compile`, which loads dynamo (~1 s on the 2-core CPU, paid by
the first constrained step of every process: a 32-token skeleton took 1.8 s instead of 0.4).
`_check` makes the same checks its wrappers make (2-D contiguous CPU int32).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import llguidance
import torch

from parafill.constraints.matcher import Matcher

ALLOW_ALL = -1  # every bit set: a row no constraint touches


def bitmask_width(n_vocab: int) -> int:
    return (n_vocab + 31) // 32


def allocate_bitmask(rows: int, n_vocab: int) -> torch.Tensor:
    """(rows, ceil(n_vocab/32)) int32 on the CPU, every token allowed; pinned when CUDA is
    there, so the copy to the device can be non-blocking."""
    pin = torch.cuda.is_available()
    return torch.full((rows, bitmask_width(n_vocab)), ALLOW_ALL, dtype=torch.int32, pin_memory=pin)


def fill_batch(
    matchers: Sequence[Matcher], bitmask: torch.Tensor, rows: Sequence[int] | None = None
) -> list[bool]:
    """Fill row rows[i] (default i) for matchers[i], all in one library call; per matcher, False
    when it allows no token. Rows not named keep their contents."""
    idx = list(range(len(matchers))) if rows is None else [int(r) for r in rows]
    _check(bitmask, max(idx, default=-1) + 1)
    if matchers:
        pairs = [(m.lib, r) for m, r in zip(matchers, idx, strict=True)]
        _executor().unsafe_compute_mask_ptr(pairs, *_raw(bitmask))
    ok = bitmask[idx].ne(0).any(dim=1).tolist()
    return [bool(o) and m.error() is None for m, o in zip(matchers, ok, strict=True)]


def fill_batch_drafts(
    items: Sequence[tuple[Matcher, int, Sequence[int]]], bitmask: torch.Tensor
) -> list[int]:
    """Masks for verifying drafted chains in one call. For (matcher, row, draft): row + j gets
    the mask after draft[:j], for j = 0 .. n where n (returned) is how many draft tokens are
    allowed; rows row + n + 1 .. row + len(draft) are unreachable and set to allow-all. The
    matchers do not move."""
    _check(bitmask, max((r + len(d) + 1 for _, r, d in items), default=0))
    if items:
        triples = [(m.lib, r, [int(t) for t in d]) for m, r, d in items]
        _executor().unsafe_compute_mask_ptr_with_draft_token(triples, *_raw(bitmask))
    counts = []
    for m, r, d in items:
        n = m.check_draft(d)
        bitmask[r + n + 1 : r + len(d) + 1] = ALLOW_ALL
        counts.append(n)
    return counts


def apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
    """In place: logits of tokens a row disallows become -inf. logits (R, V) on any device,
    bitmask (R, ceil(V/32)) int32 (copied to the logits' device when it is not there); columns
    past 32 * bitmask width are disallowed."""
    if logits.dim() != 2 or bitmask.dim() != 2 or logits.shape[0] != bitmask.shape[0]:
        raise ValueError(f"logits {tuple(logits.shape)} and bitmask {tuple(bitmask.shape)}")
    mask = bitmask.to(logits.device, non_blocking=True)
    shifts = torch.arange(32, device=logits.device, dtype=torch.int32)
    bits = (mask.unsqueeze(-1) >> shifts) & 1  # (R, W, 32)
    allowed = bits.flatten(1)[:, : logits.shape[1]].bool()  # (R, min(V, 32W))
    width = allowed.shape[1]
    logits[:, :width].masked_fill_(~allowed, float("-inf"))
    logits[:, width:] = float("-inf")


def allowed_tokens(row: torch.Tensor, n_vocab: int) -> list[int]:
    """The token ids a bitmask row allows (for tests and error messages, not the hot path)."""
    bits = (row.to(torch.int64).unsqueeze(-1) >> torch.arange(32)) & 1  # (W, 32)
    return bits.flatten()[:n_vocab].nonzero().flatten().tolist()


def _raw(bitmask: torch.Tensor) -> tuple[int, int, int]:
    """What the executor's mask calls take: the buffer's address, bytes per row, rows."""
    rows, width = bitmask.shape
    return bitmask.data_ptr(), width * 4, rows


def _check(bitmask: torch.Tensor, rows_needed: int) -> None:
    if bitmask.dtype != torch.int32 or bitmask.device.type != "cpu" or bitmask.dim() != 2:
        raise ValueError("the bitmask must be a 2-D CPU int32 tensor (see allocate_bitmask)")
    if not bitmask.is_contiguous():
        raise ValueError("the bitmask must be contiguous")
    if rows_needed > bitmask.shape[0]:
        raise ValueError(f"the bitmask has {bitmask.shape[0]} rows, {rows_needed} are needed")


@lru_cache(maxsize=1)
def _executor() -> llguidance.LLExecutor:
    """The library's thread pool for batched fills, made on first use."""
    return llguidance.LLExecutor()
