"""`Matcher`: one sequence's position inside a compiled constraint.

It fills that sequence's row of the token bitmask, advances on sampled tokens, checks drafted
chains without moving, and rolls back rejected tokens. Batched filling and applying the mask to
logits live in bitmask.py; nothing here knows about the engine or the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


class Matcher:
    """Wraps an llguidance matcher. A refused token never changes the state (the library's own
    consume would put the matcher in a permanent error state instead). When nothing but the end
    can follow (regex `ok` after "ok"), the library has already stopped and refuses the end
    token its own mask allows; here that end is accepted (and can be rolled back) instead."""

    def __init__(self, lib: Any, n_vocab: int, eos_ids: tuple[int, ...]) -> None:
        self._lib = lib  # llguidance.LLMatcher
        self.n_vocab = n_vocab
        self.eos_ids = eos_ids
        self.consumed = 0  # tokens accepted and not rolled back: the rollback limit
        self._end_after_stop = False  # an end token accepted after the library stopped

    @property
    def lib(self) -> Any:
        """The llguidance matcher (for the batched calls in bitmask.py)."""
        return self._lib

    def fill(self, row: torch.Tensor) -> bool:
        """Write the allowed next tokens into `row` (a contiguous CPU int32 bitmask row of
        ceil(n_vocab/32) words); False when no token is allowed (the request cannot go on)."""
        if row.dtype != torch.int32 or row.device.type != "cpu" or not row.is_contiguous():
            raise ValueError("a bitmask row must be a contiguous CPU int32 tensor")
        if row.numel() * 32 < self.n_vocab:
            raise ValueError(f"a bitmask row of {row.numel()} words is short of {self.n_vocab}")
        self._lib.unsafe_compute_mask_ptr(row.data_ptr(), row.numel() * 4)
        return not self._lib.is_error() and bool(row.ne(0).any())

    def accept(self, token: int) -> bool:
        """Advance on `token` if it is allowed; False (state unchanged) if not."""
        return self.accept_prefix([token]) == 1

    def accept_prefix(self, tokens: Sequence[int]) -> int:
        """Advance on the longest allowed prefix of `tokens`; returns its length."""
        ids = [int(t) for t in tokens]
        n = int(self._lib.try_consume_tokens(ids))
        if n < len(ids) and self._ends_after_stop(ids[n]):
            self._end_after_stop = True
            n += 1
        self.consumed += n
        return n

    def check_draft(self, tokens: Sequence[int]) -> int:
        """How many leading tokens of a drafted chain are allowed, without moving."""
        ids = [int(t) for t in tokens]
        n = int(self._lib.validate_tokens(ids))
        if n < len(ids) and ids[n] in self.eos_ids:  # rare: an end where the grammar stopped
            return self.fork().accept_prefix(ids)
        return n

    def rollback(self, n: int) -> None:
        """Undo the last `n` accepted tokens."""
        if not 0 <= n <= self.consumed:
            raise ValueError(f"cannot roll back {n} tokens: {self.consumed} accepted")
        lib_n = n - (n > 0 and self._end_after_stop)
        self._end_after_stop = self._end_after_stop and n == 0
        if lib_n and not self._lib.rollback(lib_n):
            raise RuntimeError(f"rollback of {n} tokens failed: {self._lib.get_error()}")
        self.consumed -= n

    def is_terminated(self) -> bool:
        """The output is finished: nothing but the end can follow (or it was accepted)."""
        return bool(self._lib.is_stopped())

    def is_accepting(self) -> bool:
        """The output so far is complete (stopping here gives a valid output)."""
        return bool(self._lib.is_accepting())

    def error(self) -> str | None:
        return str(self._lib.get_error()) if self._lib.is_error() else None

    def fork(self) -> Matcher:
        """An independent copy at the same position (a draft tree's branches)."""
        copy = Matcher(self._lib.deep_copy(), self.n_vocab, self.eos_ids)
        copy.consumed, copy._end_after_stop = self.consumed, self._end_after_stop
        return copy

    def _ends_after_stop(self, token: int) -> bool:
        """`token` is an end and the library stopped with no extension (not on an end)."""
        return (
            token in self.eos_ids
            and not self._end_after_stop
            and not self._lib.is_error()
            and self._lib.is_stopped()
            and str(self._lib.stop_reason()) == "NoExtension"
        )

    def first_mask_ok(self) -> bool:
        """Compute one mask into scratch memory: True when some token is allowed."""
        return self.fill(torch.zeros((self.n_vocab + 31) // 32, dtype=torch.int32))
