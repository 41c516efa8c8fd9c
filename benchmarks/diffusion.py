"""Masked-diffusion decoding (parafill.diffusion): tokens per forward and step time.

    python benchmarks/diffusion.py [--blocks 8 16 32] [--taus 0.7 0.9 1.0] [--caches none dual]
                                   [--rows 4] [--prompt-len 32] [--max-tokens 64]
    python benchmarks/diffusion.py --model PATH [--prompt "..."]  # a real checkpoint on disk

Without --model: random-weight checkpoints of the two supported shapes are written to a
temporary directory (real config.json keys and weight names) and loaded through
`parafill.diffusion.load`: a Fast_dLLM_v2-shape (Qwen2, block-causal) and a LLaDA-shape
(bidirectional) model, small enough for a CPU. Random weights give near-uniform confidences,
so at tau < 1 almost nothing passes the threshold and tokens/forward stays near 1; a
"peaked" variant of each (its output head scaled up, so top probabilities are high) shows
what the threshold and block size do to steps and step time. Neither says anything about
quality: that needs real weights and a task evaluation.

Each configuration decodes the same `--rows` random prompts as one batch, EOS ignored (every
row runs to --max-tokens). tokens/forward is per row (revealed positions / forwards the row
took part in); ms/forward is wall time over batch forwards; tokens/s counts returned tokens
of all rows. One torch thread unless --threads (see main).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from parafill.diffusion import DiffusionLM, load

HIDDEN, LAYERS, HEADS, KV_HEADS, FF, VOCAB = 256, 4, 8, 2, 704, 32000


def hardware() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        names = [
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def write_qwen_bd(path: Path, head_scale: float, seed: int = 0) -> Path:
    """A Fast_dLLM_v2-shape checkpoint (transformers' Qwen2 weights, Fast-dLLM's config)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=FF,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(head_scale)
    model.save_pretrained(path, safe_serialization=True)
    config = json.loads((path / "config.json").read_text())
    config.pop("rope_parameters", None)
    config.update(
        architectures=["Fast_dLLM_QwenForCausalLM"],
        model_type="Fast_dLLM_Qwen",
        rope_theta=1000000.0,
        rope_scaling=None,
        bd_size=32,
        mask_token_id=VOCAB - 1,
        eos_token_id=VOCAB - 2,
    )
    (path / "config.json").write_text(json.dumps(config))
    return path


def write_llada(path: Path, head_scale: float, seed: int = 0) -> Path:
    """A LLaDA-shape checkpoint (LLaDA's config keys and weight names, random values)."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * 0.02

    t = {"model.transformer.wte.weight": rnd(VOCAB, HIDDEN)}
    t["model.transformer.ln_f.weight"] = torch.ones(HIDDEN)
    t["model.transformer.ff_out.weight"] = rnd(VOCAB, HIDDEN) * head_scale
    for i in range(LAYERS):
        p = f"model.transformer.blocks.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "attn_out"):
            t[p + name + ".weight"] = rnd(HIDDEN, HIDDEN)
        t[p + "ff_proj.weight"], t[p + "up_proj.weight"] = rnd(FF, HIDDEN), rnd(FF, HIDDEN)
        t[p + "ff_out.weight"] = rnd(HIDDEN, FF)
        t[p + "attn_norm.weight"], t[p + "ff_norm.weight"] = torch.ones(HIDDEN), torch.ones(HIDDEN)
    path.mkdir(parents=True)
    save_file(t, str(path / "model.safetensors"))
    config = {
        "architectures": ["LLaDAModelLM"],
        "model_type": "llada",
        "d_model": HIDDEN,
        "n_heads": HEADS,
        "n_kv_heads": HEADS,
        "n_layers": LAYERS,
        "mlp_hidden_size": FF,
        "vocab_size": VOCAB,
        "embedding_size": VOCAB,
        "max_sequence_length": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "mask_token_id": VOCAB - 1,
        "eos_token_id": VOCAB - 2,
        "weight_tying": False,
        "block_type": "llama",
        "layer_norm_type": "rms",
        "activation_type": "silu",
    }
    (path / "config.json").write_text(json.dumps(config))
    return path


def run(
    model: DiffusionLM, prompts: list[list[int]], max_tokens: int, opts: dict[str, object]
) -> dict[str, float]:
    start = time.perf_counter()
    gen = model.generate(prompts, max_tokens, eos=(), **opts)
    wall = time.perf_counter() - start
    decoded = sum(r.decoded for r in gen.results)
    row_forwards = sum(r.forwards for r in gen.results)
    return {
        "forwards": gen.forwards,
        "tpf": decoded / row_forwards,
        "ms": 1000 * wall / gen.forwards,
        "tok_s": sum(len(r.tokens) for r in gen.results) / wall,
        "wall": wall,
    }


def table(models: dict[str, DiffusionLM], args: argparse.Namespace) -> list[str]:
    gen = torch.Generator().manual_seed(0)
    lines = [
        "| model | block | tau | cache | batch forwards | tokens/forward (per row) | ms/forward | tokens/s | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for name, model in models.items():
        high = min(model.spec.mask_id, model.spec.vocab - 2)  # no mask (or, here, EOS) ids
        prompts = [
            torch.randint(0, high, (args.prompt_len,), generator=gen).tolist()
            for _ in range(args.rows)
        ]
        run(model, prompts, 8, {"block": 8, "threshold": 1.0})  # warm-up, untimed
        for block in args.blocks:
            for tau in args.taus:
                for cache in args.caches:
                    r = run(
                        model,
                        prompts,
                        args.max_tokens,
                        {"block": block, "threshold": tau, "cache": cache},
                    )
                    lines.append(
                        f"| {name} | {block} | {tau} | {cache} | {r['forwards']} | {r['tpf']:.2f} | "
                        f"{r['ms']:.1f} | {r['tok_s']:.0f} | {r['wall']:.2f} |"
                    )
                    print(lines[-1], flush=True)
    return lines


def random_models(root: Path, scale: float) -> dict[str, DiffusionLM]:
    return {
        "Fast_dLLM_v2-shape, random": load(write_qwen_bd(root / "q", 1.0)),
        f"Fast_dLLM_v2-shape, peaked head (x{scale:g})": load(write_qwen_bd(root / "qp", scale)),
        "LLaDA-shape, random": load(write_llada(root / "l", 1.0)),
        f"LLaDA-shape, peaked head (x{scale:g})": load(write_llada(root / "lp", scale)),
    }


def real_model(args: argparse.Namespace) -> None:
    model = load(args.model)
    print(f"{args.model}: {model.spec}")
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.model)
        prompt = tok(args.prompt)["input_ids"]
    except (OSError, ValueError):
        tok, prompt = None, list(range(10, 42))
    table({Path(args.model).name: model}, argparse.Namespace(**{**vars(args), "rows": 1}))
    out = model.generate([prompt], args.max_tokens, threshold=0.9, cache="dual")
    text = tok.decode(list(out.results[0].tokens)) if tok is not None else out.results[0].tokens
    print(f"sample (threshold 0.9, dual cache): {text!r}")
    print("Quality is not measured here: judge outputs with a task evaluation on real weights.")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--blocks", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--taus", type=float, nargs="+", default=[0.7, 0.9, 1.0])
    ap.add_argument("--caches", nargs="+", default=["none", "dual"])
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--head-scale", type=float, default=30.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", help="a local Fast_dLLM_v2 or LLaDA checkpoint directory")
    ap.add_argument("--prompt", default="Write a short poem about the sea.")
    args = ap.parse_args()
    # one thread by default: on the shared 2-core VM, two OpenMP threads competing with other
    # jobs swung the same step from 20 to 650 ms; one thread held 49-66 ms
    torch.set_num_threads(args.threads)
    print(f"Hardware: {hardware()}")
    if args.model:
        real_model(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        models = random_models(Path(tmp), args.head_scale)
        print(
            f"Random-weight checkpoints: hidden {HIDDEN}, {LAYERS} layers, {HEADS} heads "
            f"({KV_HEADS} KV heads in the Qwen2 shape), FFN {FF}, vocab {VOCAB}, fp32; "
            f"{args.rows} rows x {args.prompt_len} prompt tokens -> {args.max_tokens} tokens each, "
            "EOS ignored. Speed only: random weights say nothing about quality."
        )
        table(models, args)


if __name__ == "__main__":
    main()
