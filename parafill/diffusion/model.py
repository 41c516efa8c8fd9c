"""The transformer forward shared by both diffusion families (RMSNorm, RoPE, SwiGLU, GQA).

One call takes a dense (G, T) block of query tokens at explicit positions and KV columns,
writes their keys/values into the cache and attends over the first K cache columns under a
boolean mask. Which columns a query may see (block-causal, bidirectional, tree-packed) is
decided by the caller (`layout.py`); this module knows nothing about masks' meaning.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from parafill.diffusion.loader import Layer, Spec, Weights


@dataclass
class KV:
    """Keys and values per layer: (layers, G, Hkv, W, D). Rows are packed sequences."""

    k: Tensor
    v: Tensor

    @staticmethod
    def empty(spec: Spec, rows: int, width: int, like: Tensor) -> KV:
        shape = (spec.layers, rows, spec.kv_heads, width, spec.head_dim)
        return KV(like.new_zeros(shape), like.new_zeros(shape))

    def select(self, keep: Tensor) -> KV:
        """The rows in `keep` (a retirement)."""
        return KV(self.k[:, keep], self.v[:, keep])

    def widen(self, width: int) -> KV:
        """The same rows with zero columns appended up to `width` (an admission of a longer
        row)."""
        shape = (*self.k.shape[:3], width - self.k.shape[3], self.k.shape[4])
        pad = self.k.new_zeros(shape)
        return KV(torch.cat([self.k, pad], 3), torch.cat([self.v, pad], 3))

    def extend(self, other: KV) -> KV:
        """These rows followed by `other`'s (an admission)."""
        return KV(torch.cat([self.k, other.k], 1), torch.cat([self.v, other.v], 1))


@dataclass(frozen=True)
class Queries:
    """One forward's queries, G packed rows of T slots each."""

    tokens: Tensor  # (G, T) token ids
    positions: Tensor  # (G, T) position ids (RoPE)
    cols: Tensor  # (G, T) KV column each query's key/value is written to
    mask: Tensor  # (G, 1, T, K) bool: may the query attend to cache column k < K
    out_rows: Tensor  # (M,) packed row of each wanted logit
    out_slots: Tensor  # (M,) slot of each wanted logit


class Forward:
    """The model's forward over `Weights` (fp32 on CPU by default)."""

    def __init__(self, spec: Spec, weights: Weights) -> None:
        self.spec = spec
        self.w = weights
        # as HF computes it (float32), so positions rotate identically
        half = torch.arange(0, spec.head_dim, 2, dtype=torch.int64).float() / spec.head_dim
        self.inv_freq = (1.0 / spec.rope_theta**half).to(weights.embed.device)

    @torch.inference_mode()
    def __call__(self, q: Queries, kv: KV) -> Tensor:
        """Write the queries' K/V into `kv`; return float32 logits (M, V) at the out slots."""
        x = F.embedding(q.tokens, self.w.embed)  # (G, T, d)
        cos, sin = self._rope(q.positions)  # (G, T, D)
        rows = torch.arange(q.tokens.shape[0], device=x.device)[:, None].expand_as(q.cols)
        for i, layer in enumerate(self.w.layers):
            h = F.rms_norm(x, (x.shape[-1],), layer.ln1, self.spec.eps)
            x = x + self._attention(i, layer, h, (cos, sin), (rows, q), kv)
            h = F.rms_norm(x, (x.shape[-1],), layer.ln2, self.spec.eps)
            gu = F.linear(h, layer.gate_up)
            half = gu.shape[-1] // 2
            x = x + F.linear(F.silu(gu[..., :half]) * gu[..., half:], layer.down)
        out = x[q.out_rows, q.out_slots]  # (M, d): only the logits the step reads
        out = F.rms_norm(out, (out.shape[-1],), self.w.norm, self.spec.eps)
        return F.linear(out, self.w.head).float()

    def _rope(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        freqs = positions[..., None].float() * self.inv_freq  # (G, T, D/2)
        emb = torch.cat([freqs, freqs], -1)
        return emb.cos().to(self.w.embed.dtype), emb.sin().to(self.w.embed.dtype)

    def _attention(
        self,
        i: int,
        layer: Layer,
        h: Tensor,
        rope: tuple[Tensor, Tensor],
        where: tuple[Tensor, Queries],
        kv: KV,
    ) -> Tensor:
        s = self.spec
        rows, q = where
        g, t, _ = h.shape
        qkv = F.linear(h, layer.qkv, layer.qkv_bias)
        nq, nk = s.heads * s.head_dim, s.kv_heads * s.head_dim
        cos, sin = rope[0][:, :, None], rope[1][:, :, None]
        query = _rotate(qkv[..., :nq].view(g, t, s.heads, s.head_dim), cos, sin)
        key = _rotate(qkv[..., nq : nq + nk].view(g, t, s.kv_heads, s.head_dim), cos, sin)
        value = qkv[..., nq + nk :].view(g, t, s.kv_heads, s.head_dim)
        kv.k[i][rows, :, q.cols] = key  # (G, T, Hkv, D) scattered to each query's column
        kv.v[i][rows, :, q.cols] = value
        width = q.mask.shape[-1]
        out = F.scaled_dot_product_attention(
            query.transpose(1, 2),
            kv.k[i][:, :, :width],
            kv.v[i][:, :, :width],
            attn_mask=q.mask,
            enable_gqa=s.heads != s.kv_heads,
        )  # (G, H, T, D)
        return F.linear(out.transpose(1, 2).reshape(g, t, nq), layer.o)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    # x (G, T, H, D); rotate-half RoPE, as Qwen2 and LLaDA both apply it
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin
