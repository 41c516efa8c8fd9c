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

from parafill.backends.engine import kernels
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
class Keys:
    """Ordered attention's inputs (kernels.c): per new token, its KV row and the column it
    writes, and the columns it attends to in its sequence's position order (an int32 array's
    address and length). `hold` keeps the arrays alive for the step."""

    rows: Tensor  # (N,) int32
    cols: Tensor  # (N,) int32
    ptrs: Tensor  # (N,) int64
    lens: Tensor  # (N,) int32
    hold: tuple[Tensor, ...] = ()


@dataclass(frozen=True)
class StepInput:
    """One forward's worth of new tokens. N new tokens over R rows, Q query slots per row."""

    tokens: Tensor  # (N,) token ids
    positions: Tensor  # (N,) position ids
    rows: Tensor  # (N,) KV row each token is written to
    cols: Tensor  # (N,) KV column each token is written to
    qslots: Tensor  # (N,) index of the token among its row's queries
    mask: Tensor | None  # (R, 1, Q, L) bool: may query attend to column (None: `keys`)
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
    keys: Keys | None = None  # ordered attention (kernels.c) instead of the mask


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
        self._fused: tuple[int, kernels.Layers | None] | None = None  # (id of layers, built)

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
        if step.keys is not None:
            return self._run_ordered(step, (k_cache, v_cache), layers, trace)
        assert step.mask is not None
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
            x = x + _mlp(_rms(x, layer.ln2, self.shapes.eps), layer)
            if trace is not None:
                trace.append(x)
        return self._head(x, step.logits_at)

    def _head(self, x: Tensor, at: Tensor) -> Tensor:
        x = _rms(x[at], self.norm, self.shapes.eps)
        logits = _linear(x, self.lm_head).float()
        return logits if self.head_exact is None else _refine(logits, x, self.head_exact)

    def _run_ordered(
        self,
        step: StepInput,
        kv: tuple[Tensor, Tensor],
        layers: Sequence[int] | None,
        trace: list[Tensor] | None,
    ) -> Tensor:
        """The forward with ordered attention (kernels.c): whole layers in one call where every
        projection is in the kernels' own format, else torch's projections around it."""
        keys = step.keys
        assert keys is not None
        x = F.embedding(step.tokens, self.embed)  # (N, d)
        order = list(range(len(self.layers))) if layers is None else list(layers)
        fused = self._fused_layers()
        if trace is not None:
            trace.append(x)
        if fused is not None:
            inputs = (
                step.positions,
                self.cos,
                self.sin,
                keys.rows,
                keys.cols,
                keys.ptrs,
                keys.lens,
            )
            if trace is None:
                which = None if layers is None else torch.tensor(order, dtype=torch.int32)
                x = fused.run(x, inputs, kv, which)
            else:
                for i in order:
                    x = fused.run(x.clone(), inputs, kv, torch.tensor([i], dtype=torch.int32))
                    trace.append(x)
            return self._head(x, step.logits_at)
        cos, sin = _rope_tables(self.cos[step.positions], self.sin[step.positions])
        for i in order:
            layer = self.layers[i]
            h = _rms(x, layer.ln1, self.shapes.eps)
            x = x + self._ordered_attention(i, layer, h, (cos, sin), keys, kv)
            x = x + _mlp(_rms(x, layer.ln2, self.shapes.eps), layer)
            if trace is not None:
                trace.append(x)
        return self._head(x, step.logits_at)

    def _ordered_attention(
        self,
        i: int,
        layer: _Layer,
        h: Tensor,
        rope: tuple[Tensor, Tensor],
        keys: Keys,
        kv: tuple[Tensor, Tensor],
    ) -> Tensor:
        s = self.shapes
        n = h.shape[0]
        qkv = _linear(h, layer.qkv, layer.qkv_bias)
        nqk = (s.heads + s.kv_heads) * s.head_dim
        qk = _rope(qkv[:, :nqk].view(n, s.heads + s.kv_heads, s.head_dim), *rope)
        q, k = qk[:, : s.heads], qk[:, s.heads :]
        v = qkv[:, nqk:].view(n, s.kv_heads, s.head_dim)
        rows, cols = keys.rows.long(), keys.cols.long()
        kv[0][i, rows, :, cols] = k
        kv[1][i, rows, :, cols] = v
        out = kernels.attention(
            q, kv[0][i], kv[1][i], (keys.rows, keys.ptrs, keys.lens), s.head_dim**-0.5
        )
        return _linear(out.reshape(n, s.heads * s.head_dim), layer.o, layer.o_bias)

    def _fused_layers(self) -> kernels.Layers | None:
        """The layers for `kernels.Layers` when every projection is in its format (built once
        per set of layers; None where some is not)."""
        if self._fused is not None and self._fused[0] == id(self.layers):
            return self._fused[1]
        built = _fuse_layers(self)
        self._fused = (id(self.layers), built)
        return built

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
        assert step.mask is not None
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
        assert step.mask is not None
        r, length = qp.shape[0], step.mask.shape[-1]
        rows = slice(step.row0, step.row0 + r)
        if step.keep is None:
            keys, values = k_cache[i, rows, :, :length], v_cache[i, rows, :, :length]
        else:  # only the columns some query sees (a tree row mostly of other sequences' KV)
            keys = k_cache[i, rows].index_select(2, step.keep)
            values = v_cache[i, rows].index_select(2, step.keep)
        return _grouped_attention(qp, keys, values, mask, self.shapes.kv_heads)  # (R, Q, H, D)


ATTENTION = ("auto", "ordered", "native", "fp64")  # EngineConfig.attention


def can_order(lm: CompactLM) -> bool:
    """Whether ordered attention (kernels.c) can run this model: fp32 on the CPU, kernels built."""
    return lm.device.type == "cpu" and lm.dtype == torch.float32 and kernels.available()


def attention_kind(lm: CompactLM, choice: str) -> str:
    """What `EngineConfig.attention` means for this model: "ordered", "native" or "fp64".

    "auto": ordered attention where it can run (can_order): each query reads its keys in its
    sequence's position order with fixed-order sums, whatever row or column they sit in and
    whatever else the step holds, so every packing mode and filler gives the same tokens with
    fp32 K/V (kernels.c). Elsewhere float64 where the projections are int8 / int4 (torch's
    kernels are batch-invariant but take bf16 activations, and rounding to bf16 turns
    attention's last-bit fp32 differences between packing modes into different tokens; in
    float64 they stay far below fp32's last bit; it costs 1.07-1.6x per step and twice the KV
    bytes), the model's own dtype otherwise. bf16 weights gain nothing from float64: oneDNN's
    bf16 GEMM changes a row's sums with the number of rows, so bf16 stays inexact across
    modes."""
    if choice not in ATTENTION:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION)}, not {choice!r}")
    if choice == "ordered" and not can_order(lm):
        raise ValueError(
            "ordered attention needs an fp32 model on the CPU and parafill's CPU kernels "
            "(built with the system C compiler; PARAFILL_KERNELS=0 turns them off)"
        )
    if choice != "auto":
        return choice
    if can_order(lm):
        return "ordered"
    w = lm.layers[0].qkv
    return "fp64" if isinstance(w, Packed) and w.kind not in ("bf16",) else "native"


def kv_dtype(lm: CompactLM, choice: str) -> torch.dtype:
    """The KV cache's dtype, which attention computes in (`attention_kind`)."""
    return torch.float64 if attention_kind(lm, choice) == "fp64" else lm.dtype


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


def _fuse_layers(lm: CompactLM) -> kernels.Layers | None:
    def part(w: Weight, bias: Tensor | None) -> kernels.Proj:
        assert isinstance(w, Packed)
        b = bias.float().contiguous() if bias is not None else None
        return (w.data, w.shape, 4 if w.kind == "q4" else 8, b)

    names = ("qkv", "o", "gate_up", "down")
    ok = (
        lm.dtype == torch.float32
        and lm.device.type == "cpu"
        and all(
            isinstance(getattr(x, n), Packed) and getattr(x, n).kind in ("q4", "q8")
            for x in lm.layers
            for n in names
        )
    )
    if not ok:
        return None
    s = lm.shapes
    inter = lm.layers[0].down.shape[1]
    hidden = lm.embed.shape[1]
    layers = [
        kernels.LayerWeights(
            x.ln1.float().contiguous(), x.ln2.float().contiguous(), part(x.qkv, x.qkv_bias),
            part(x.o, x.o_bias), part(x.gate_up, None), part(x.down, None),
        )
        for x in lm.layers
    ]  # fmt: skip
    return kernels.Layers(layers, (hidden, s.heads, s.kv_heads, s.head_dim, inter), s.eps)


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


def _mlp(h: Tensor, layer: _Layer) -> Tensor:
    """down(SiLU(gate(h)) * up(h)), gate and up as one fused projection."""
    gu = _linear(h, layer.gate_up)
    half = gu.shape[-1] // 2
    return _linear(F.silu(gu[:, :half]) * gu[:, half:], layer.down)


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
    return cos[0].to(like.dtype).contiguous(), sin[0].to(like.dtype).contiguous()  # (P, D)
