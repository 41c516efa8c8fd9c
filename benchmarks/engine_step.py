"""Decode step time of parafill's engine vs HF generate, at widths 1/4/16/64.

    python benchmarks/engine_step.py [--shapes smollm2,1.1b,8b] [--widths 1,4,16,64]

Random-weight Llama models of real shapes (greedy step time does not depend on weight
values), prompt ids 1..8. `--shapes real` is the embedded SmolLM2-135M-Instruct with its real
weights and a real chat prompt: use it for sampled runs (--temperature, --top-p), whose cost
depends on how peaked the model's distributions are (random weights give near-flat ones, the
worst case for top-p).
Engine: ms per decode step with W sequences active (rows mode; on CUDA the static-shape
step replayed as a CUDA graph, and the eager step beside it). HF: ms per generated token
step of `generate` at batch W (fastest of --reps runs, interleaved with the engine's; eager, dynamic cache; and with --hf-static, the static cache
that transformers compiles with torch.compile). Also the weight-streaming floor
(weight bytes / memory bandwidth, --bandwidth GB/s) when on CUDA.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import AutoModelForCausalLM, CompileConfig, LlamaConfig

from parafill.backends.engine.engine import Engine, EngineConfig
from parafill.backends.engine.model import CompactLM
from parafill.backends.engine.sampling import GenParams
from parafill.backends.engine.weights import load

SHAPES = {
    "smollm2": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        tie_word_embeddings=True,
    ),
    "1.1b": dict(
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        vocab_size=32000,
    ),
    "8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
    ),
}


PROMPT = [1, 2, 3, 4, 5, 6, 7, 8]


def build(name: str, device: str, dtype: torch.dtype):
    global PROMPT
    if name == "real":
        model, tok = load(None, device, dtype)
        msgs = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]
        text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        PROMPT = tok.encode(text, add_special_tokens=False)
        return model.eval()
    PROMPT = [1, 2, 3, 4, 5, 6, 7, 8]
    cfg = LlamaConfig(**SHAPES[name], max_position_embeddings=4096)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model.eval()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def engine_ms(
    model,
    width: int,
    steps: int,
    device: str,
    decode: str = "auto",
    compile: bool = False,
    sampling: tuple[float, float] = (0.0, 1.0),
) -> float:
    temperature, top_p = sampling
    cfg = EngineConfig(
        rows=max(width, 1), budget_tokens=max(width, 1) * 512, decode=decode, compile=compile
    )
    eng = Engine(CompactLM(model, 4096), cfg)
    for i in range(width):
        params = GenParams(steps + 8, temperature, top_p, seed=i if temperature > 0 else None)
        eng.submit([PROMPT[0] + (i if len(PROMPT) == 8 else 0), *PROMPT[1:]], params)
    for _ in range(3):  # prefill + warm-up
        eng.step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        eng.step()
    sync(device)
    return (time.perf_counter() - t0) / steps * 1e3


def hf_ms(
    model,
    width: int,
    steps: int,
    device: str,
    static: bool = False,
    sampling: tuple[float, float] = (0.0, 1.0),
) -> float:
    x = torch.tensor([PROMPT], device=device).repeat(width, 1)
    kw: dict = dict(attention_mask=torch.ones_like(x), do_sample=False, pad_token_id=0)
    if sampling[0] > 0:
        kw.update(do_sample=True, temperature=sampling[0], top_p=sampling[1], top_k=0)
    if static:  # transformers compiles the forward itself when the cache is static
        kw["cache_implementation"] = "static"
        if device == "cpu":  # it only auto-compiles on accelerators unless told to
            cc = CompileConfig(mode="default")
            cc._compile_all_devices = True
            kw["compile_config"] = cc
        model.generate(x, max_new_tokens=steps + 1, min_new_tokens=steps + 1, **kw)
    model.generate(x, max_new_tokens=2, min_new_tokens=2, **kw)
    sync(device)
    t0 = time.perf_counter()
    model.generate(x, max_new_tokens=1, min_new_tokens=1, **kw)
    sync(device)
    t_prefill = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.generate(x, max_new_tokens=steps + 1, min_new_tokens=steps + 1, **kw)
    sync(device)
    return (time.perf_counter() - t0 - t_prefill) / steps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="smollm2")
    ap.add_argument("--widths", default="1,4,16,64")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument(
        "--reps",
        type=int,
        default=3,
        help="repetitions, engine and HF "
        "interleaved; the fastest of each is reported (robust to a busy machine)",
    )
    ap.add_argument("--bandwidth", type=float, default=3350.0, help="GB/s (H100 SXM: 3350)")
    ap.add_argument(
        "--compile",
        default="",
        help="shapes to also time the engine's "
        "torch.compile'd static step on (slow to compile), e.g. 1.1b",
    )
    ap.add_argument(
        "--hf-static",
        default="",
        help="shapes to also time HF static cache + torch.compile on (slow to compile), e.g. 1.1b",
    )
    ap.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="sample every sequence (engine and HF) at this temperature; 0 = greedy",
    )
    ap.add_argument("--top-p", type=float, default=1.0)
    a = ap.parse_args()
    smp = (a.temperature, a.top_p)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    hw = torch.cuda.get_device_name() if device == "cuda" else f"CPU x{torch.get_num_threads()}"
    mode = f"sampled, T={a.temperature}, top-p={a.top_p}" if a.temperature > 0 else "greedy"
    print(f"hardware: {hw}, dtype {dtype}, torch {torch.__version__}, {mode}")
    cuda = device == "cuda"
    print(
        "| shape | width | engine ms/step | engine eager ms | HF generate ms | HF static+compile ms"
        " | engine compiled ms | HF / engine | floor ms | engine / floor | engine / width-1 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in a.shapes.split(","):
        model = build(name, device, dtype)
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        floor = weight_bytes / (a.bandwidth * 1e9) * 1e3 if cuda else float("nan")
        base = None
        for w in (int(x) for x in a.widths.split(",")):
            es, hs_ = [], []
            for _ in range(a.reps):
                es.append(engine_ms(model, w, a.steps, device, sampling=smp))
                hs_.append(hf_ms(model, w, a.steps, device, sampling=smp))
            e, h = min(es), min(hs_)
            eager = (
                engine_ms(model, w, a.steps, device, "eager", sampling=smp)
                if cuda
                else float("nan")
            )
            hs = (
                hf_ms(model, w, a.steps, device, True, sampling=smp)
                if name in a.hf_static
                else float("nan")
            )
            ec = (
                engine_ms(model, w, a.steps, device, "static", True, sampling=smp)
                if name in a.compile
                else float("nan")
            )
            base = base or e
            print(
                f"| {name} | {w} | {e:.2f} | {eager:.2f} | {h:.2f} | {hs:.2f} | {ec:.2f} "
                f"| {h / e:.2f}× "
                f"| {floor:.2f} | {e / floor:.2f}× | {e / base:.2f}× |",
                flush=True,
            )
        del model
        if device == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
