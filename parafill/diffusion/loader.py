"""Loads a masked-diffusion LM from a local Hugging Face directory (config.json + safetensors).

Two families are known, by the `architectures` entry of config.json: Fast-dLLM v2's block
diffusion model of Qwen2 shape (`Fast_dLLM_QwenForCausalLM`: Qwen2 weight names, attention
bidirectional within a block and causal across blocks, token i+1 predicted at position i) and
LLaDA's full masked model (`LLaDAModelLM`: LLaDA's own weight names, bidirectional attention).
Anything else is refused with the list of what is supported. Nothing is downloaded.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

FAST_DLLM_V2 = "Fast_dLLM_QwenForCausalLM"
LLADA = "LLaDAModelLM"
FAST_DLLM_V2_MASK = 151665  # "|<MASK>|" in Fast_dLLM_v2's Qwen2.5 vocabulary
LLADA_MASK = 126336  # LLaDA's [MASK]


@dataclass(frozen=True)
class Spec:
    """What the decoder needs to know about a model, read from its config.json."""

    architecture: str
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int  # rows of the output head; token ids must be below this
    eps: float
    rope_theta: float
    mask_id: int
    eos_ids: tuple[int, ...]
    block_causal: bool  # True: block-diffusion attention; False: fully bidirectional
    token_shift: bool  # True: the logits at position i predict the token at i + 1
    block: int  # the block size the model was trained with (its default decode block)
    context: int | None = None  # positions the model was trained for (config.json), if stated


@dataclass(frozen=True)
class Layer:
    """One transformer layer's tensors; q/k/v and gate/up are fused at load time."""

    ln1: Tensor
    qkv: Tensor
    qkv_bias: Tensor | None
    o: Tensor
    ln2: Tensor
    gate_up: Tensor
    down: Tensor


@dataclass(frozen=True)
class Weights:
    embed: Tensor  # (V, d)
    layers: tuple[Layer, ...]
    norm: Tensor
    head: Tensor  # (V, d); the embedding itself when tied


@dataclass(frozen=True)
class _Names:
    """Where a family keeps its tensors; `layer` is formatted with the layer index."""

    embed: str
    norm: str
    head: str
    layer: str
    ln1: str
    q: str
    k: str
    v: str
    o: str
    ln2: str
    gate: str
    up: str
    down: str


_QWEN2_NAMES = _Names(
    embed="model.embed_tokens.weight",
    norm="model.norm.weight",
    head="lm_head.weight",
    layer="model.layers.{}.",
    ln1="input_layernorm",
    q="self_attn.q_proj",
    k="self_attn.k_proj",
    v="self_attn.v_proj",
    o="self_attn.o_proj",
    ln2="post_attention_layernorm",
    gate="mlp.gate_proj",
    up="mlp.up_proj",
    down="mlp.down_proj",
)

_LLADA_NAMES = _Names(
    embed="model.transformer.wte.weight",
    norm="model.transformer.ln_f.weight",
    head="model.transformer.ff_out.weight",
    layer="model.transformer.blocks.{}.",
    ln1="attn_norm",
    q="q_proj",
    k="k_proj",
    v="v_proj",
    o="attn_out",
    ln2="ff_norm",
    gate="ff_proj",
    up="up_proj",
    down="ff_out",
)


def _eos(cfg: dict[str, Any]) -> tuple[int, ...]:
    eos = cfg.get("eos_token_id")
    if eos is None:
        return ()
    return tuple(int(e) for e in eos) if isinstance(eos, list) else (int(eos),)


def _int(value: object) -> int | None:
    return int(value) if isinstance(value, int | float) and value > 0 else None


def _require(cfg: dict[str, Any], key: str, wanted: object, default: object) -> None:
    got = cfg.get(key, default)
    if got != wanted:
        raise ValueError(f"unsupported config: {key}={got!r} (this loader handles {wanted!r})")


def _qwen2_spec(cfg: dict[str, Any]) -> Spec:
    _require(cfg, "hidden_act", "silu", "silu")
    # transformers 4 writes rope_theta (+ rope_scaling); transformers 5 rope_parameters
    rope = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or rope
    if scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
        raise ValueError(f"unsupported config: rope scaling {scaling!r}")
    heads = int(cfg["num_attention_heads"])
    return Spec(
        architecture=FAST_DLLM_V2,
        layers=int(cfg["num_hidden_layers"]),
        heads=heads,
        kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or cfg["hidden_size"] // heads),
        vocab=int(cfg["vocab_size"]),
        eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=float(cfg.get("rope_theta") or rope.get("rope_theta") or 10000.0),
        mask_id=int(cfg.get("mask_token_id", FAST_DLLM_V2_MASK)),
        eos_ids=_eos(cfg),
        block_causal=True,
        token_shift=True,
        block=int(cfg.get("bd_size", 32)),
        context=_int(cfg.get("max_position_embeddings")),
    )


def _llada_spec(cfg: dict[str, Any]) -> Spec:
    for key, wanted, default in (
        ("block_type", "llama", "llama"),
        ("layer_norm_type", "rms", "rms"),
        ("activation_type", "silu", "silu"),
        ("alibi", False, False),
        ("rope", True, True),
        ("scale_logits", False, False),
        ("attention_layer_norm", False, False),
        ("include_bias", False, False),
    ):
        _require(cfg, key, wanted, default)
    heads = int(cfg["n_heads"])
    return Spec(
        architecture=LLADA,
        layers=int(cfg["n_layers"]),
        heads=heads,
        kv_heads=int(cfg.get("n_kv_heads") or heads),
        head_dim=int(cfg["d_model"]) // heads,
        vocab=int(cfg.get("embedding_size") or cfg["vocab_size"]),
        eps=float(cfg.get("rms_norm_eps", 1e-5)),
        rope_theta=float(cfg.get("rope_theta", 10000.0)),
        mask_id=int(cfg.get("mask_token_id", LLADA_MASK)),
        eos_ids=_eos(cfg),
        block_causal=False,
        token_shift=False,
        block=32,
        context=_int(cfg.get("max_sequence_length")),
    )


_FAMILIES: dict[str, tuple[Callable[[dict[str, Any]], Spec], _Names]] = {
    FAST_DLLM_V2: (_qwen2_spec, _QWEN2_NAMES),
    LLADA: (_llada_spec, _LLADA_NAMES),
}
SUPPORTED = tuple(_FAMILIES)


def read_spec(path: str | Path) -> Spec:
    """Read config.json and return the model's Spec, or raise ValueError for an
    architecture this package does not know."""
    cfg = json.loads((Path(path) / "config.json").read_text())
    arch = (cfg.get("architectures") or [None])[0]
    if arch not in _FAMILIES:
        raise ValueError(
            f"unsupported diffusion architecture {arch!r} (model_type "
            f"{cfg.get('model_type')!r}); supported: {', '.join(SUPPORTED)}"
        )
    spec = _FAMILIES[arch][0](cfg)
    if not 0 <= spec.mask_id < spec.vocab:
        raise ValueError(f"mask token id {spec.mask_id} is outside the vocabulary ({spec.vocab})")
    return spec


def _shards(path: Path) -> dict[str, Path]:
    """Tensor name -> file, from model.safetensors.index.json or a single file."""
    index = path / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: path / file for name, file in weight_map.items()}
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no safetensors weights in {path}")
    names: dict[str, Path] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            names.update(dict.fromkeys(f.keys(), file))
    return names


def read_weights(
    path: str | Path, spec: Spec, dtype: torch.dtype, device: torch.device | None = None
) -> Weights:
    """Read the tensors the forward needs, fused, cast to `dtype`, on `device`."""
    where = _shards(Path(path))
    names = _FAMILIES[spec.architecture][1]

    def get(name: str, required: bool = True) -> Tensor | None:
        if name not in where:
            if required:
                raise ValueError(f"weight {name!r} missing from {path}")
            return None
        with safe_open(str(where[name]), framework="pt") as f:
            t: Tensor = f.get_tensor(name).to(device=device, dtype=dtype)
            return t

    def need(name: str) -> Tensor:
        t = get(name)
        assert t is not None
        return t

    layers = tuple(_read_layer(get, need, names, i) for i in range(spec.layers))
    embed = need(names.embed)
    head = get(names.head, required=False)
    return Weights(embed, layers, need(names.norm), embed if head is None else head)


def _read_layer(
    get: Callable[[str, bool], Tensor | None], need: Callable[[str], Tensor], n: _Names, i: int
) -> Layer:
    p = n.layer.format(i)
    biases = [get(p + proj + ".bias", False) for proj in (n.q, n.k, n.v)]
    present = [b for b in biases if b is not None]
    if present and len(present) != 3:
        raise ValueError(f"layer {i}: q/k/v biases must be all present or all absent")
    return Layer(
        ln1=need(p + n.ln1 + ".weight"),
        qkv=torch.cat([need(p + proj + ".weight") for proj in (n.q, n.k, n.v)]),
        qkv_bias=torch.cat(present) if present else None,
        o=need(p + n.o + ".weight"),
        ln2=need(p + n.ln2 + ".weight"),
        gate_up=torch.cat([need(p + n.gate + ".weight"), need(p + n.up + ".weight")]),
        down=need(p + n.down + ".weight"),
    )
