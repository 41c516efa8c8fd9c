"""Loading real-shaped checkpoints: config.json keys, weight names, refusal of the unknown."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusion_ref import EOS, MASK, VOCAB, Reference
from safetensors.torch import load_file

from parafill.diffusion import SUPPORTED, DiffusionLM, load
from parafill.diffusion.model import KV, Queries


def test_qwen_block_diffusion_roundtrip(
    dirs: dict[str, Path], models: dict[str, DiffusionLM]
) -> None:
    spec, w = models["qwen"].spec, models["qwen"].forward.w
    assert spec.architecture == "Fast_dLLM_QwenForCausalLM"
    assert (spec.block_causal, spec.token_shift, spec.block) == (True, True, 8)
    assert (spec.mask_id, spec.eos_ids, spec.vocab) == (MASK, (EOS,), VOCAB)
    assert (spec.layers, spec.heads, spec.kv_heads, spec.head_dim) == (2, 4, 2, 8)
    t = load_file(str(dirs["qwen"] / "model.safetensors"))
    assert torch.equal(w.embed, t["model.embed_tokens.weight"])
    assert torch.equal(w.head, t["lm_head.weight"])
    p = "model.layers.1.self_attn."
    qkv = torch.cat([t[p + "q_proj.weight"], t[p + "k_proj.weight"], t[p + "v_proj.weight"]])
    assert torch.equal(w.layers[1].qkv, qkv)
    assert w.layers[1].qkv_bias is not None
    assert torch.equal(w.layers[1].down, t["model.layers.1.mlp.down_proj.weight"])


def test_llada_roundtrip(dirs: dict[str, Path], models: dict[str, DiffusionLM]) -> None:
    spec, w = models["llada"].spec, models["llada"].forward.w
    assert spec.architecture == "LLaDAModelLM"
    assert (spec.block_causal, spec.token_shift) == (False, False)
    assert (spec.mask_id, spec.eos_ids, spec.rope_theta) == (MASK, (EOS,), 500000.0)
    t = load_file(str(dirs["llada"] / "model.safetensors"))
    assert torch.equal(w.embed, t["model.transformer.wte.weight"])
    assert torch.equal(w.head, t["model.transformer.ff_out.weight"])
    p = "model.transformer.blocks.0."
    assert torch.equal(
        w.layers[0].gate_up, torch.cat([t[p + "ff_proj.weight"], t[p + "up_proj.weight"]])
    )
    assert torch.equal(w.layers[0].o, t[p + "attn_out.weight"])
    assert w.layers[0].qkv_bias is None


def test_llada_default_mask_id(dirs: dict[str, Path], tmp_path: Path) -> None:
    shutil.copytree(dirs["llada"], tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    del cfg["mask_token_id"]
    cfg["vocab_size"] = cfg["embedding_size"] = 126464  # LLaDA-8B's; the file is smaller
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    from parafill.diffusion.loader import read_spec

    assert read_spec(tmp_path / "m").mask_id == 126336


def _hf_qwen(path: Path) -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = json.loads((path / "config.json").read_text())
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers")
    keys += ("num_attention_heads", "num_key_value_heads", "rms_norm_eps", "rope_theta")
    model = Qwen2ForCausalLM(Qwen2Config(**{k: cfg[k] for k in keys}, tie_word_embeddings=False))
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    return model.eval()


def test_block_of_one_is_qwen2_causal_forward(
    dirs: dict[str, Path], models: dict[str, DiffusionLM]
) -> None:
    """Block-causal attention with blocks of 1 is causal attention: the forward and the test's
    reference must both give transformers' own Qwen2 logits on the same weights."""
    tokens = [5, 17, 3, 40, 41, 9, 77, 12, 60]
    n = len(tokens)
    with torch.no_grad():
        want = _hf_qwen(dirs["qwen"])(torch.tensor([tokens])).logits[0]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    model = models["qwen"]
    kv = KV.empty(model.spec, 1, n + 1, model.forward.w.embed)
    q = Queries(
        tokens=torch.tensor([tokens]),
        positions=torch.arange(n)[None],
        cols=torch.arange(n)[None],
        mask=causal[None, None],
        out_rows=torch.zeros(n, dtype=torch.long),
        out_slots=torch.arange(n),
    )
    torch.testing.assert_close(model.forward(q, kv), want, atol=1e-4, rtol=1e-4)
    ref = Reference(dirs["qwen"]).logits(tokens, causal)[0].float()
    torch.testing.assert_close(ref, want, atol=1e-4, rtol=1e-4)


def test_unknown_architecture_refused(dirs: dict[str, Path], tmp_path: Path) -> None:
    shutil.copytree(dirs["qwen"], tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2")
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="Qwen2ForCausalLM") as err:
        load(tmp_path / "m")
    for name in SUPPORTED:
        assert name in str(err.value)


def test_unsupported_llada_variant_refused(dirs: dict[str, Path], tmp_path: Path) -> None:
    shutil.copytree(dirs["llada"], tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["alibi"] = True
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="alibi"):
        load(tmp_path / "m")


def test_transformers5_rope_parameters(dirs: dict[str, Path], tmp_path: Path) -> None:
    shutil.copytree(dirs["qwen"], tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg.pop("rope_theta")
    cfg.pop("rope_scaling")
    cfg["rope_parameters"] = {"rope_theta": 1234.0, "rope_type": "default"}
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    assert load(tmp_path / "m").spec.rope_theta == 1234.0
    cfg["rope_parameters"] = {"rope_theta": 1234.0, "rope_type": "yarn", "factor": 4.0}
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="yarn"):
        load(tmp_path / "m")


def test_sharded_checkpoint(
    dirs: dict[str, Path], models: dict[str, DiffusionLM], tmp_path: Path
) -> None:
    from safetensors.torch import save_file

    src = load_file(str(dirs["llada"] / "model.safetensors"))
    names = sorted(src)
    out = tmp_path / "m"
    out.mkdir()
    shutil.copy(dirs["llada"] / "config.json", out / "config.json")
    halves = {"a.safetensors": names[: len(names) // 2], "b.safetensors": names[len(names) // 2 :]}
    for file, part in halves.items():
        save_file({n: src[n] for n in part}, str(out / file))
    index = {"weight_map": {n: f for f, part in halves.items() for n in part}}
    (out / "model.safetensors.index.json").write_text(json.dumps(index))
    got = load(out).generate([[4, 5, 6]], 6, block=4, threshold=1.0, eos=())
    want = models["llada"].generate([[4, 5, 6]], 6, block=4, threshold=1.0, eos=())
    assert got.results == want.results
