"""The preallocated KV cache and its column allocator.

The cache is R rows x L columns per layer. In `rows` mode each sequence owns one row (a
forked prefix is copied into it); in `tree` mode there is one row and every sequence owns a
set of its columns, sharing prefix columns by reference (refcounted). Sized once from a
budget; allocation never grows it, so running out is a wait or a clear error, not an OOM.
Each row has spare columns past `spec.cols` that are never allocated: the static decode step
sends its padding lanes' K/V to the first of them (`scratch`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import torch

from parafill.backends.engine.model import Shapes

Mode = Literal["rows", "tree"]


class BudgetError(ValueError):
    """A request can never fit in the KV budget."""


@dataclass(frozen=True)
class CacheSpec:
    mode: Mode
    rows: int
    cols: int

    @staticmethod
    def from_budget(mode: Mode, budget_tokens: int, rows: int) -> CacheSpec:
        if mode == "tree":
            return CacheSpec("tree", 1, budget_tokens)
        return CacheSpec("rows", rows, max(1, budget_tokens // rows))


def bytes_per_token(shapes: Shapes, dtype: torch.dtype) -> int:
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * shapes.layers * shapes.kv_heads * shapes.head_dim * elem


def tokens_in(budget_bytes: int, per_token: int, rows: int = 1) -> int:
    """How many tokens' K/V a byte budget holds, after each of `rows` cache rows' scratch and
    alignment columns (at most 8), so the whole cache fits the budget; none is an error."""
    tokens = budget_bytes // per_token - 8 * rows
    if tokens < rows:
        raise BudgetError(
            f"a KV budget of {budget_bytes} bytes holds no token of this model "
            f"({per_token} bytes of K/V per token)"
        )
    return tokens


_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_size(text: str) -> int:
    """Bytes from '2GiB', '512 MiB', '1.5GB', '100000' (case-insensitive)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS:
        raise ValueError(f"not a size: {text!r} (examples: 2GiB, 512MiB, 1.5GB, 100000)")
    return int(float(m.group(1)) * _UNITS[unit])


class KVCache:
    def __init__(self, spec: CacheSpec, shapes: Shapes, dtype: torch.dtype, device: str) -> None:
        self.spec = spec
        self.scratch = spec.cols
        self.width = -(-(spec.cols + 1) // 8) * 8  # physical columns: aligned, with scratch
        size = (shapes.layers, spec.rows, shapes.kv_heads, self.width, shapes.head_dim)
        self.k = torch.zeros(size, dtype=dtype, device=device)
        self.v = torch.zeros(size, dtype=dtype, device=device)
        self.refs = torch.zeros(spec.rows, spec.cols, dtype=torch.int32)  # host-side
        self.free_cols = [spec.cols] * spec.rows

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    def check_fits(self, tokens: int) -> None:
        if tokens > self.spec.cols:
            raise BudgetError(
                f"request needs {tokens} KV slots but a {self.spec.mode} cache row holds "
                f"{self.spec.cols}; raise the KV budget or lower max_tokens"
            )

    def alloc(self, n: int, row: int | None = None) -> tuple[int, list[int]] | None:
        """Reserve n columns: in a given row, or in any free row. None if there is no room."""
        rows = [row] if row is not None else range(self.spec.rows)
        for r in rows:
            if self.free_cols[r] >= n and (row is not None or self._row_empty(r)):
                cols = torch.nonzero(self.refs[r] == 0).flatten()[:n].tolist()
                self._ref(r, cols, +1)
                return r, cols
        return None

    def share(self, row: int, cols: list[int]) -> None:
        self._ref(row, cols, +1)

    def release(self, row: int, cols: list[int]) -> None:
        self._ref(row, cols, -1)

    def copy(self, src_row: int, src_cols: list[int], dst_row: int, dst_cols: list[int]) -> None:
        dev = self.k.device
        s, d = torch.tensor(src_cols, device=dev), torch.tensor(dst_cols, device=dev)
        self.k[:, dst_row, :, d] = self.k[:, src_row, :, s]
        self.v[:, dst_row, :, d] = self.v[:, src_row, :, s]

    def _row_empty(self, r: int) -> bool:
        return self.spec.mode == "tree" or self.free_cols[r] == self.spec.cols

    def _ref(self, row: int, cols: list[int], delta: int) -> None:
        if not cols:
            return
        idx = torch.tensor(cols)
        before = self.refs[row, idx]
        after = before + delta
        if bool((after < 0).any()):
            raise RuntimeError("KV column released more often than reserved")
        self.refs[row, idx] = after
        self.free_cols[row] -= int((before == 0).sum()) - int((after == 0).sum())
