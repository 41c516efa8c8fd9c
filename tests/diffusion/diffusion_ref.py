"""Tiny random-weight checkpoints of the two supported shapes, and a slow reference decoder.

The checkpoints are real on-disk directories: config.json with the real projects' keys and
safetensors with their weight names (Fast_dLLM_v2: Qwen2's, saved by transformers' own
Qwen2ForCausalLM; LLaDA: its `model.transformer.*` names). The reference is written from the
papers' descriptions, independently of parafill.diffusion: a per-sequence forward with
explicit loops over layers and heads in float64, full recompute every step, and LLaDA's
low-confidence remasking revealing exactly one token per step.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

VOCAB = 96
MASK = 95
EOS = 2
KVs = list[tuple[torch.Tensor, torch.Tensor]]
Stale = tuple[KVs, tuple[int, int]]


def make_qwen_bd(
    path: Path,
    seed: int = 0,
    bd_size: int = 8,
    head_scale: float = 1.0,
    vocab: tuple[int, int, int] = (VOCAB, MASK, EOS),
) -> Path:
    """A Fast_dLLM_v2-shaped checkpoint: transformers' Qwen2 weights, Fast-dLLM's config keys.
    `vocab`: (rows of the embedding and head, mask token id, EOS id)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=vocab[0],
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rope_theta=10000.0,
        initializer_range=0.3,
        tie_word_embeddings=False,
    )
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:  # Qwen2 initialises biases to 0; make them matter
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.3)
        model.lm_head.weight.mul_(head_scale)
    model.save_pretrained(path, safe_serialization=True)
    config = json.loads((path / "config.json").read_text())
    config.pop("rope_parameters", None)  # written by transformers 5; the real one has these:
    config.update(
        rope_theta=10000.0,
        rope_scaling=None,
        architectures=["Fast_dLLM_QwenForCausalLM"],
        model_type="Fast_dLLM_Qwen",
        bd_size=bd_size,
        mask_token_id=vocab[1],
        eos_token_id=vocab[2],
    )
    (path / "config.json").write_text(json.dumps(config))
    return path


def make_llada(path: Path, seed: int = 0, head_scale: float = 1.0) -> Path:
    """A LLaDA-shaped checkpoint: LLaDA's config keys and weight names, random values."""
    gen = torch.Generator().manual_seed(seed)
    d, ff, layers = 32, 64, 2

    def rnd(*shape: int, std: float = 0.3) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * std

    t = {"model.transformer.wte.weight": rnd(VOCAB, d, std=1.0)}
    t["model.transformer.ln_f.weight"] = 1 + rnd(d, std=0.1)
    t["model.transformer.ff_out.weight"] = rnd(VOCAB, d) * head_scale
    for i in range(layers):
        p = f"model.transformer.blocks.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "attn_out"):
            t[p + name + ".weight"] = rnd(d, d)
        t[p + "ff_proj.weight"], t[p + "up_proj.weight"] = rnd(ff, d), rnd(ff, d)
        t[p + "ff_out.weight"] = rnd(d, ff)
        t[p + "attn_norm.weight"], t[p + "ff_norm.weight"] = 1 + rnd(d, std=0.1), 1 + rnd(d)
    path.mkdir(parents=True, exist_ok=True)
    save_file(t, str(path / "model.safetensors"))
    config = {
        "architectures": ["LLaDAModelLM"],
        "model_type": "llada",
        "d_model": d,
        "n_heads": 4,
        "n_kv_heads": 4,
        "n_layers": layers,
        "mlp_hidden_size": ff,
        "vocab_size": VOCAB,
        "embedding_size": VOCAB,
        "max_sequence_length": 512,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "mask_token_id": MASK,
        "eos_token_id": EOS,
        "weight_tying": False,
        "include_bias": False,
        "include_qkv_bias": False,
        "activation_type": "silu",
        "block_type": "llama",
        "layer_norm_type": "rms",
        "alibi": False,
        "rope": True,
        "scale_logits": False,
        "attention_layer_norm": False,
    }
    (path / "config.json").write_text(json.dumps(config))
    return path


class Reference:
    """Slow, obvious forward of a checkpoint directory (float64, one sequence)."""

    def __init__(self, path: Path) -> None:
        self.cfg = json.loads((path / "config.json").read_text())
        self.t = {k: v.double() for k, v in load_file(str(path / "model.safetensors")).items()}
        self.llada = self.cfg["architectures"] == ["LLaDAModelLM"]

    def _names(self, i: int) -> dict[str, str]:
        if self.llada:
            p = f"model.transformer.blocks.{i}."
            keys = ("attn_norm", "q_proj", "k_proj", "v_proj", "attn_out", "ff_norm")
            keys += ("ff_proj", "up_proj", "ff_out")
        else:
            p = f"model.layers.{i}."
            keys = ("input_layernorm", "self_attn.q_proj", "self_attn.k_proj")
            keys += ("self_attn.v_proj", "self_attn.o_proj", "post_attention_layernorm")
            keys += ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
        roles = ("ln1", "q", "k", "v", "o", "ln2", "gate", "up", "down")
        return {role: p + key for role, key in zip(roles, keys, strict=True)}

    def _dims(self) -> tuple[int, int, int, float, float]:
        c = self.cfg
        if self.llada:
            return c["n_layers"], c["n_heads"], c["n_kv_heads"], c["rms_norm_eps"], c["rope_theta"]
        heads = c["num_attention_heads"]
        eps, theta = c["rms_norm_eps"], c["rope_theta"]
        return c["num_hidden_layers"], heads, c["num_key_value_heads"], eps, theta

    def _rms(self, x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w

    def _lin(self, x: torch.Tensor, name: str) -> torch.Tensor:
        y = x @ self.t[name + ".weight"].T
        bias = self.t.get(name + ".bias")
        return y if bias is None else y + bias

    def logits(
        self, tokens: list[int], allowed: torch.Tensor, stale: Stale | None = None
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """(T, V) logits and every layer's (rotated keys, values), each (T, d_kv).
        allowed[q, k]: may query q attend key k. With `stale` = (keys and values of an earlier
        forward, positions [a, z)), keys and values outside [a, z) are the earlier ones: that
        is what a KV cache reused from that forward feeds the attention (Fast-dLLM's prefix
        and dual caches); only the logits inside [a, z) mean anything then."""
        layers, heads, kv_heads, eps, theta = self._dims()
        emb = "model.transformer.wte.weight" if self.llada else "model.embed_tokens.weight"
        x = self.t[emb][torch.tensor(tokens)]
        n, d = x.shape
        hd = d // heads
        inv = [1.0 / theta ** (2 * j / hd) for j in range(hd // 2)]
        ang = torch.tensor([[p * f for f in inv] for p in range(n)], dtype=torch.float64)
        cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)

        def rope(v: torch.Tensor) -> torch.Tensor:  # (n, hd)
            rot = torch.cat([-v[:, hd // 2 :], v[:, : hd // 2]], -1)
            return v * cos + rot * sin

        kvs = []
        for i in range(layers):
            nm = self._names(i)
            h = self._rms(x, self.t[nm["ln1"] + ".weight"], eps)
            q, k, v = self._lin(h, nm["q"]), self._lin(h, nm["k"]), self._lin(h, nm["v"])
            k = torch.cat([rope(k[:, j * hd : (j + 1) * hd]) for j in range(kv_heads)], -1)
            if stale is not None:
                (old, (a, z)), outside = stale, torch.ones(n, dtype=torch.bool)
                outside[a:z] = False
                k, v = k.where(~outside[:, None], old[i][0]), v.where(~outside[:, None], old[i][1])
            kvs.append((k, v))
            outs = []
            for head in range(heads):
                kvh = head // (heads // kv_heads)
                qh = rope(q[:, head * hd : (head + 1) * hd])
                kh, vh = k[:, kvh * hd : (kvh + 1) * hd], v[:, kvh * hd : (kvh + 1) * hd]
                score = (qh @ kh.T) / math.sqrt(hd)
                score = score.masked_fill(~allowed, float("-inf"))
                outs.append(torch.softmax(score, -1) @ vh)
            x = x + self._lin(torch.cat(outs, -1), nm["o"])
            h = self._rms(x, self.t[nm["ln2"] + ".weight"], eps)
            gate, up = self._lin(h, nm["gate"]), self._lin(h, nm["up"])
            x = x + self._lin(gate * torch.sigmoid(gate) * up, nm["down"])
        norm = "model.transformer.ln_f.weight" if self.llada else "model.norm.weight"
        head_name = "model.transformer.ff_out.weight" if self.llada else "lm_head.weight"
        return self._rms(x, self.t[norm], eps) @ self.t[head_name].T, kvs


def reference_generate(
    ref: Reference,
    prompt: list[int],
    max_tokens: int,
    block: int,
    eos: tuple[int, ...] = (),
    cache: str = "none",
) -> tuple[list[int], int]:
    """LLaDA's low-confidence remasking, one token per step, semi-autoregressive blocks, the
    whole sequence recomputed every step. Returns (tokens up to EOS, forward passes).
    cache="prefix" / "dual" (Fast-dLLM): a block's first step is a full forward whose keys
    and values are kept; its later steps recompute only the block and everything after it
    (prefix) or the block alone (dual), reading the kept keys and values elsewhere.

    Block diffusion (Fast_dLLM_v2): blocks sit at absolute positions k*block, attention is
    bidirectional inside a block and causal across blocks, and the logits at position i
    predict position i + 1. LLaDA: blocks start where the prompt ends, attention is full."""
    n = len(prompt)
    if ref.llada:
        starts = list(range(n, n + -(-max_tokens // block) * block, block))
    else:
        first = n // block * block
        starts = list(range(first, -(-(n + max_tokens) // block) * block, block))
    x = list(prompt) + [MASK] * (starts[-1] + block - n)
    decided = [True] * n + [False] * (len(x) - n)
    forwards = 0
    allowed = _allowed(len(x), block, ref.llada)
    for start in starts:
        kept: KVs | None = None
        while not all(decided[start : start + block]):
            end = len(x) if cache == "prefix" else start + block
            stale = None if kept is None or cache == "none" else (kept, (start, end))
            logits, kvs = ref.logits(x, allowed, stale)
            kept = kvs if kept is None else kept
            forwards += 1
            best, best_conf, best_tok = -1, -1.0, -1
            for p in range(start, start + block):
                if decided[p]:
                    continue
                row = logits[p] if ref.llada else logits[p - 1]
                probs = torch.softmax(row, -1)
                conf, tok = float(probs.max()), int(probs.argmax())
                if conf > best_conf:
                    best, best_conf, best_tok = p, conf, tok
            x[best], decided[best] = best_tok, True
            out = _finished(x, decided, n, max_tokens, eos)
            if out is not None:
                return out, forwards
    raise AssertionError("unreachable: the canvas covers max_tokens")


def _allowed(n: int, block: int, llada: bool) -> torch.Tensor:
    allowed = torch.ones(n, n, dtype=torch.bool)
    if not llada:
        for q in range(n):
            for k in range(n):
                allowed[q, k] = k // block <= q // block
    return allowed


def _finished(
    x: list[int], decided: list[bool], n: int, max_tokens: int, eos: tuple[int, ...]
) -> list[int] | None:
    """The answer once every position before an EOS (or all max_tokens) is decided."""
    for p in range(n, n + max_tokens):
        if not decided[p]:
            return None
        if x[p] in eos:
            return x[n:p]
    return x[n : n + max_tokens]
