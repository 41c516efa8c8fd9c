"""A compact forward pass over Hugging Face Llama-family weights (Llama, SmolLM2, Qwen2, Mistral).

It works on a flat list of new tokens with explicit positions and KV slots, so one forward can
serve many sequences (batch rows) or many branches of one sequence (tree mask). It reuses the
HF module's tensors (no copy) and its rotary table; the HF forward is the reference it is
tested against. Architectures it does not know are refused (`supports`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from parafill.backends.engine.quant import Packed

SUPPORTED = {"llama", "qwen2", "mistral"}


def supports(hf_model: Any) -> bool:
    cfg = hf_model.config
    if getattr(cfg, "model_type", None) not in SUPPORTED:
        return False
    act = getattr(cfg, "hidden_act", "silu")
    return act == "silu" and not getattr(cfg, "mlp_bias", False)


Weight = Tensor | Packed  # a projection's weight: dense, or packed by quant.py


@dataclass(frozen=True)
class Shapes:
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    eps: float


@dataclass(frozen=True)
class _Layer:
    """One decoder layer's tensors. `qkv` and `gate_up` are fused matrices; the HF module's
    own q/k/v and gate/up parameters are re-pointed at views of them (no second copy)."""

    ln1: Tensor
    qkv: Weight
    qkv_bias: Tensor | None
    o: Weight
    o_bias: Tensor | None
    ln2: Tensor
    gate_up: Weight
    down: Weight


def _fuse(mods: list[Any], attr: str) -> Tensor | None:
    """Concatenate the modules' `attr` tensors along dim 0 and make each module's parameter a
    view of the result, so the HF model (the reference) and the engine share one copy."""
    parts = [getattr(m, attr) for m in mods]
    if all(p is None for p in parts):
        return None
    if any(p is None for p in parts):
        raise ValueError(f"compact forward needs all or none of the fused projections' {attr}")
    with torch.no_grad():
        fused = torch.cat([p.detach() for p in parts])
        start = 0
        for p in parts:
            n = p.shape[0]
            p.data = fused[start : start + n]
            start += n
    return fused


@dataclass(frozen=True)
class StepInput:
    """One forward's worth of new tokens. N new tokens over R rows, Q query slots per row."""

    tokens: Tensor  # (N,) token ids
    positions: Tensor  # (N,) position ids
    rows: Tensor  # (N,) KV row each token is written to
    cols: Tensor  # (N,) KV column each token is written to
    qslots: Tensor  # (N,) index of the token among its row's queries
    mask: Tensor  # (R, 1, Q, L) bool: may query attend to column
    logits_at: Tensor  # (M,) indices into N whose next-token logits are wanted
    dense: bool = False  # token b is query slot b % Q of row b // Q (no scatter/gather needed)
    row0: int = 0  # the mask's first row is this KV row (rows below it have no queries)
    keep: Tensor | None = None  # (L,) the KV columns the mask's columns are (None: 0..L-1)
    # rows mode with rows that have no queries between those that do: the mask holds the rows
    # with queries only, as runs (first KV row, count) attended one run at a time, and
    # `mrows` (N,) is each token's row of the mask (None: the mask's rows are row0..)
    spans: tuple[tuple[int, int], ...] | None = None
    mrows: Tensor | None = None
    # every new token in one KV row at consecutive columns: (row, first column), so that the
    # K/V writes are slices (one request's step) rather than scattered index writes
    write: tuple[int, int] | None = None


class CompactLM:
    def __init__(self, hf_model: Any, max_positions: int) -> None:
        if not supports(hf_model):
            kind = getattr(hf_model.config, "model_type", "?")
            raise ValueError(f"compact forward does not support model type {kind!r}")
        cfg = hf_model.config
        base = hf_model.model
        self.shapes = Shapes(
            layers=cfg.num_hidden_layers,
            heads=cfg.num_attention_heads,
            kv_heads=cfg.num_key_value_heads,
            head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads,
            vocab=cfg.vocab_size,
            eps=cfg.rms_norm_eps,
        )
        self.embed: Tensor = base.embed_tokens.weight
        self.layers = [_layer(layer) for layer in base.layers]
        self.norm: Tensor = base.norm.weight
        self.lm_head: Weight = hf_model.lm_head.weight  # quant.py may pack it (and the layers')
        # a packed head's dense weight (tied: the embedding's storage), for `_refine`
        self.head_exact: Tensor | None = None
        self.dtype: torch.dtype = self.embed.dtype
        self.device: torch.device = self.embed.device
        self.cos, self.sin = _rotary_table(base.rotary_emb, max_positions, self.embed)

    @torch.inference_mode()
    def forward(
        self,
        step: StepInput,
        k_cache: Tensor,
        v_cache: Tensor,
        layers: Sequence[int] | None = None,
    ) -> Tensor:
        """Writes the new tokens' K/V into the caches (layers, R, Hkv, L, D) and returns
        logits (M, vocab) for `step.logits_at`. `layers`: run only these (in order; the
        others pass the hidden state through and write nothing), as a self-drafter does."""
        return self.run(step, k_cache, v_cache, layers)

    def run(
        self,
        step: StepInput,
        k_cache: Tensor,
        v_cache: Tensor,
        layers: Sequence[int] | None = None,
        trace: list[Tensor] | None = None,
    ) -> Tensor:
        """`forward` without its inference-mode wrapper (for torch.compile and graph capture).
        `trace` receives the hidden state before the first layer and after each one."""
        x = F.embedding(step.tokens, self.embed)  # (N, d)
        # q / k / v are computed in the cache's dtype from the projection on (its output cast
        # once, not q, k and v each): RoPE in that dtype too
        kv = k_cache.dtype
        cos, sin = _rope_tables(self.cos[step.positions].to(kv), self.sin[step.positions].to(kv))
        group = self.shapes.heads // self.shapes.kv_heads
        r, _, nq, length = step.mask.shape
        # fold the G query heads sharing a KV head into the query axis: (R, 1, G*Q, L), and
        # make it additive once per forward, its rows 16-aligned in memory, so that no layer's
        # attention call converts or pads it again
        folded = step.mask[:, :, None].expand(r, 1, group, nq, length).reshape(r, 1, -1, length)
        additive = torch.where(folded, 0.0, float("-inf")).to(k_cache.dtype)
        mask = F.pad(additive, (0, -length % 16))[..., :length]
        qrows = step.mrows if step.mrows is not None else step.rows - step.row0  # mask rows
        if trace is not None:
            trace.append(x)
        for i in range(len(self.layers)) if layers is None else layers:
            layer = self.layers[i]
            h = _rms(x, layer.ln1, self.shapes.eps)
            x = x + self._attention(i, layer, h, cos, sin, (step, mask, qrows), k_cache, v_cache)
            h = _rms(x, layer.ln2, self.shapes.eps)
            gu = _linear(h, layer.gate_up)
            half = gu.shape[-1] // 2
            x = x + _linear(F.silu(gu[:, :half]) * gu[:, half:], layer.down)
            if trace is not None:
                trace.append(x)
        x = _rms(x[step.logits_at], self.norm, self.shapes.eps)
        logits = _linear(x, self.lm_head).float()
        return logits if self.head_exact is None else _refine(logits, x, self.head_exact)

    def _attention(
        self,
        i: int,
        layer: _Layer,
        h: Tensor,
        cos: Tensor,
        sin: Tensor,
        inputs: tuple[StepInput, Tensor, Tensor],
        k_cache: Tensor,
        v_cache: Tensor,
    ) -> Tensor:
        step, mask, qrows = inputs  # mask: the step's mask folded for grouped heads
        s = self.shapes
        n = h.shape[0]
        qkv = _linear(h, layer.qkv, layer.qkv_bias, k_cache.dtype)
        nqk = (s.heads + s.kv_heads) * s.head_dim
        qk = _rope(qkv[:, :nqk].view(n, s.heads + s.kv_heads, s.head_dim), cos, sin)
        q, k = qk[:, : s.heads], qk[:, s.heads :]
        v = qkv[:, nqk:].view(n, s.kv_heads, s.head_dim)
        if step.write is not None:
            row, c0 = step.write
            k_cache[i, row, :, c0 : c0 + n] = k.transpose(0, 1)
            v_cache[i, row, :, c0 : c0 + n] = v.transpose(0, 1)
        else:
            k_cache[i, step.rows, :, step.cols] = k
            v_cache[i, step.rows, :, step.cols] = v
        r, _, nq, length = step.mask.shape
        if step.dense:
            qp = q.reshape(r, nq, s.heads, s.head_dim)
        else:
            qp = q.new_zeros(r, nq, s.heads, s.head_dim)
            qp[qrows, step.qslots] = q
        if step.spans is not None:  # one run of rows with queries at a time, then joined
            outs, at = [], 0
            for first, count in step.spans:
                rows = slice(first, first + count)
                keys, values = k_cache[i, rows, :, :length], v_cache[i, rows, :, :length]
                part = mask[at : at + count]
                outs.append(_grouped_attention(qp[at : at + count], keys, values, part, s.kv_heads))
                at += count
            out = torch.cat(outs)
        else:
            out = self._rows_attention(i, step, qp, mask, (k_cache, v_cache))
        if step.dense:
            out = out.reshape(n, s.heads * s.head_dim)
        else:
            out = out[qrows, step.qslots].reshape(n, s.heads * s.head_dim)
        # o_proj has a bias with attention_bias; a packed kernel takes `out` in the cache's
        # dtype (it casts to bf16 itself), and gives the residual stream's
        return _linear(out, layer.o, layer.o_bias, h.dtype)

    def _rows_attention(
        self, i: int, step: StepInput, qp: Tensor, mask: Tensor, kv: tuple[Tensor, Tensor]
    ) -> Tensor:
        """Attention over the KV rows row0.. (all of them, or their columns `step.keep`)."""
        k_cache, v_cache = kv
        r, length = qp.shape[0], step.mask.shape[-1]
        rows = slice(step.row0, step.row0 + r)
        if step.keep is None:
            keys, values = k_cache[i, rows, :, :length], v_cache[i, rows, :, :length]
        else:  # only the columns some query sees (a tree row mostly of other sequences' KV)
            keys = k_cache[i, rows].index_select(2, step.keep)
            values = v_cache[i, rows].index_select(2, step.keep)
        return _grouped_attention(qp, keys, values, mask, self.shapes.kv_heads)  # (R, Q, H, D)


ATTENTION = ("auto", "native", "fp64")  # EngineConfig.attention


def kv_dtype(lm: CompactLM, choice: str) -> torch.dtype:
    """The KV cache's dtype, which attention computes in (`EngineConfig.attention`).

    "auto": float64 where the projections are int8 / int4, the model's dtype elsewhere. Their
    kernels are batch-invariant but take bf16 activations, and rounding to bf16 turns
    attention's last-bit fp32 differences between packing modes (its sums depend on the key
    width, the number of queries and where a tree puts a sequence's keys) into different
    tokens; in float64 those differences stay far below fp32's last bit, and every packing
    mode and filler gave the tokens of one-at-a-time decoding
    (tests/engine/test_quant_exact.py). It costs 1.07x (128 keys) to 1.6x (1024 keys, 8
    rows) per int4 step on the 2-core CPU (twice the KV bytes). bf16 weights gain nothing
    from it: oneDNN's bf16 GEMM changes a row's sums with the number of rows (from 24 rows
    at 1536 inputs), so bf16 stays inexact across modes."""
    if choice not in ATTENTION:
        raise ValueError(f"attention must be auto, native or fp64, not {choice!r}")
    w = lm.layers[0].qkv
    invariant = isinstance(w, Packed) and w.kind != "bf16"
    if choice == "fp64" or (choice == "auto" and invariant):
        return torch.float64
    return lm.dtype


def _grouped_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, kv_heads: int) -> Tensor:
    """q (R, Q, H, D), k/v (R, Hkv, L, D), folded mask (R, 1, G*Q, L) -> (R, Q, H, D).

    The G = H / Hkv query heads that share a KV head are folded into the query axis, so the
    kernel reads each KV head once (no repeated K/V, and the fused kernels accept it)."""
    r, nq, h, d = q.shape
    g = h // kv_heads
    if nq == 1:  # one query per row (decoding): the fold is a view
        out = F.scaled_dot_product_attention(q.view(r, kv_heads, g, d), k, v, attn_mask=mask)
        return out.view(r, 1, h, d)
    qg = q.view(r, nq, kv_heads, g, d).permute(0, 2, 3, 1, 4).reshape(r, kv_heads, g * nq, d)
    out = F.scaled_dot_product_attention(qg, k, v, attn_mask=mask)  # (R, Hkv, G*Q, D)
    return out.view(r, kv_heads, g, nq, d).permute(0, 3, 1, 2, 4).reshape(r, nq, h, d)


def _layer(layer: Any) -> _Layer:
    attn, mlp = layer.self_attn, layer.mlp
    qkv_mods = [attn.q_proj, attn.k_proj, attn.v_proj]
    qkv = _fuse(qkv_mods, "weight")
    gate_up = _fuse([mlp.gate_proj, mlp.up_proj], "weight")
    assert qkv is not None and gate_up is not None
    return _Layer(
        ln1=layer.input_layernorm.weight,
        qkv=qkv,
        qkv_bias=_fuse(qkv_mods, "bias"),
        o=attn.o_proj.weight,
        o_bias=attn.o_proj.bias,
        ln2=layer.post_attention_layernorm.weight,
        gate_up=gate_up,
        down=mlp.down_proj.weight,
    )


_ONEDNN = (
    getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]
    else None
)


REFINE = 8  # a packed head's top logits recomputed from the dense weight


def _refine(logits: Tensor, x: Tensor, dense: Tensor) -> Tensor:
    """A packed head's logits with its REFINE highest recomputed from the dense weight and the
    hidden state as it is (the packed kernel rounded both to bf16, which flips near ties):
    the argmax is the dense head's whenever it is among the packed head's top REFINE."""
    top = logits.topk(REFINE, dim=-1).indices  # (M, REFINE)
    # a product and a sum over h, not einsum / bmm: a row's result must not depend on how
    # many rows the step has (batched rows decoding stays exact)
    exact = (dense[top].float() * x.float()[:, None, :]).sum(-1)
    return logits.scatter_(1, top, exact)


def _linear(
    x: Tensor, w: Weight, b: Tensor | None = None, out: torch.dtype | None = None
) -> Tensor:
    """x @ w.T (+ b). On CPU in fp32 oneDNN's kernel streams the weights once for 1..8 rows
    at about the cost of one row, where the default (MKL) costs 1.6-2x more from 2 rows on:
    measured on 2 cores over SmolLM2-135M's 30 layers of projections, 16-18 ms vs 26-50 ms
    for 1-8 rows (and the LM head 2.3 vs 6.9 ms at 1 row). That is what makes verifying
    drafted tokens nearly free here. Elsewhere, `F.linear`; packed weights, their kernel.
    `out`: the result's dtype (default x's)."""
    if isinstance(w, Packed):
        y = w.matmul(x, out)
        return y if b is None else y + b
    if out is not None and out != x.dtype:
        return _linear(x.to(w.dtype), w, b).to(out)
    if _ONEDNN is not None and x.device.type == "cpu" and x.dtype == torch.float32:
        # not under torch.compile: inductor cannot lower this op (every request failed)
        if not torch.is_grad_enabled() and not torch.compiler.is_compiling():
            return _ONEDNN(x, w, b, "none", [], "")  # type: ignore[no-any-return]
    return F.linear(x, w, b)


def _rms(x: Tensor, w: Tensor, eps: float) -> Tensor:
    # one fused kernel where torch has it; the same values as HF's fp32 formula on CPU
    return F.rms_norm(x, (x.shape[-1],), w, eps)


def _rope_tables(cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """Per forward, not per layer: cos (N, 1, D), and sin (N, 1, D) with its first half
    negated, so that `_rope` rotates by one roll: x*cos + [-x2, x1]*sin, the same products
    (-a*b equals a*-b exactly)."""
    half = sin.shape[-1] // 2
    signed = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)
    return cos[:, None], signed[:, None]


def _rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    # x (N, H, D); cos / signed sin (N, 1, D) from `_rope_tables`
    return x * cos + torch.roll(x, x.shape[-1] // 2, dims=-1) * sin


def _rotary_table(rotary: Any, n: int, like: Tensor) -> tuple[Tensor, Tensor]:
    pos = torch.arange(n, device=like.device)[None]
    with torch.no_grad():
        cos, sin = rotary(like[:1], pos)
    return cos[0].to(like.dtype), sin[0].to(like.dtype)  # (P, D)
