"""Weight formats of the engine on this CPU: decode speed at several widths, and quality.

    python benchmarks/weights.py            # -> benchmarks/results/weights_cpu.md

Speed: the engine (rows mode, eager step, greedy, autoregressive) decodes --tokens tokens for
each of `width` concurrent requests; tokens/s of all requests together, per format, formats
interleaved within each repetition (median of --reps).

Quality, on the embedded SmolLM2 (`weights=` as `LocalConfig` builds it):
- agreement: fp32 greedy continuations (--agree-tokens tokens) of the 60 vendored MT-bench
  questions as chat prompts; each format reads prompt + continuation in one teacher-forced
  forward and its argmax is compared with fp32's at every continuation position;
- perplexity: every turn of the 60 MT-bench questions (benchmarks/data/mt_bench_dev.jsonl,
  FastChat, Apache-2.0) as a separate text, all tokens after the first; llama.cpp's own
  perplexity of the same token ids with the same Q4_1 GGUF through llama-cpp-python
  (its CPU kernels, fp32 activations quantized to Q8 for the dot products), where installed.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch

from parafill.backends.engine.engine import Engine, EngineConfig
from parafill.backends.engine.fallback import build_engine
from parafill.backends.engine.model import CompactLM, StepInput
from parafill.backends.engine.quant import FORMATS
from parafill.backends.engine.sampling import GenParams
from parafill.backends.engine.weights import default_gguf, load
from parafill.fillers import make

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "benchmarks/data/mt_bench_dev.jsonl"


_HF: list[torch.nn.Module] = []


def engine(fmt: str, rows: int) -> Engine:
    if not _HF:
        _HF.append(load(None)[0])
    hf = _HF[0]
    eng = build_engine(hf, EngineConfig(budget_tokens=rows * 512, rows=rows), 4096,
                       lambda _m: None, fmt, default_gguf())  # fmt: skip
    assert isinstance(eng, Engine)
    return eng


def decode_rate(eng: Engine, prompts: list[list[int]], tokens: int) -> float:
    """Tokens/s of decoding `tokens` for every prompt at once (prefill excluded)."""
    ids = [eng.submit(p, GenParams(tokens), make("autoregressive")) for p in prompts]
    done: set[int] = set()
    made, t0 = 0, None
    while len(done) < len(ids):
        for o in eng.step():
            if t0 is not None:
                made += len(o.tokens)
            if o.finish:
                done.add(o.seq_id)
        if t0 is None and all(s.fed >= len(s.prompt) for s in eng.live):
            t0 = time.perf_counter()  # every prompt prefilled: decoding from here
    return made / (time.perf_counter() - (t0 or time.perf_counter()))


def speed(widths: list[int], tokens: int, reps: int, chats: list[list[int]]) -> dict:
    engines = {(f, w): engine(f, w) for f in FORMATS for w in widths}
    got: dict[tuple[str, int], list[float]] = {}
    for _ in range(reps):
        for w in widths:
            prompts = [chats[i % len(chats)] for i in range(w)]
            for f in FORMATS:
                got.setdefault((f, w), []).append(decode_rate(engines[f, w], prompts, tokens))
    return {k: statistics.median(v) for k, v in got.items()}


def logits_all(lm: CompactLM, ids: list[int]) -> torch.Tensor:
    """Next-token logits at every position of one sequence, one forward."""
    n, s = len(ids), lm.shapes
    k = torch.zeros(s.layers, 1, s.kv_heads, n, s.head_dim, dtype=lm.dtype)
    ar = torch.arange(n)
    mask = torch.ones(n, n, dtype=torch.bool).tril()[None, None]
    step = StepInput(torch.tensor(ids), ar, torch.zeros(n, dtype=torch.long), ar, ar, mask,
                     ar, dense=True)  # fmt: skip
    return lm.forward(step, k, k.clone())


def nll(logits: torch.Tensor, ids: list[int]) -> tuple[float, int]:
    logp = torch.log_softmax(logits[:-1].float(), dim=-1)
    target = torch.tensor(ids[1:])
    return float(-logp.gather(1, target[:, None]).sum()), len(ids) - 1


def quality(chats: list[list[int]], texts: list[list[int]], n_tok: int) -> dict:
    ref = engine("fp32", 8)
    conts = {}
    ids = [ref.submit(p, GenParams(n_tok), make("autoregressive")) for p in chats]
    out: dict[int, list[int]] = {}
    while len(out) < len(ids) or ref.live:
        for o in ref.step():
            conts.setdefault(o.seq_id, []).extend(o.tokens)
            if o.finish:
                out[o.seq_id] = conts[o.seq_id]
    seqs = [(p, out[i]) for p, i in zip(chats, ids, strict=True)]
    res = {}
    for f in FORMATS:
        eng = engine(f, 1)
        lm = eng.model
        same = total = 0
        for p, c in seqs:
            if not c:
                continue
            lg = logits_all(lm, p + c)[len(p) - 1 : len(p) + len(c) - 1]
            same += int((lg.argmax(-1) == torch.tensor(c)).sum())
            total += len(c)
        tot_nll = tot_n = 0.0
        for t in texts:
            a, b = nll(logits_all(lm, t), t)
            tot_nll, tot_n = tot_nll + a, tot_n + b
        res[f] = (same, total, math.exp(tot_nll / tot_n))
    res["llama.cpp Q4_1"] = (None, None, llama_cpp_ppl(texts))
    return res


def llama_cpp_ppl(texts: list[list[int]]) -> float | None:
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    import numpy as np

    llm = Llama(str(default_gguf()), n_ctx=1024, logits_all=True, verbose=False, n_threads=2)
    tot, n = 0.0, 0
    for t in texts:
        llm.reset()
        llm.eval(t)
        lg = torch.from_numpy(np.array(llm.scores[: len(t)], dtype=np.float32))
        a, b = nll(lg, t)
        tot, n = tot + a, n + b
    return math.exp(tot / n)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--widths", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--agree-tokens", type=int, default=48)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/weights_cpu.md"))
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    _, tok = load(None)
    rows = [json.loads(x) for x in DATA.open()]

    def chat(q: str) -> list[int]:
        o = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)
        return [int(i) for i in (o if isinstance(o, list) else o["input_ids"])]

    chats = [chat(r["turns"][0]) for r in rows]
    texts = [tok.encode(t)[:512] for r in rows for t in r["turns"]]
    lines = ["# Engine weight formats on this CPU (embedded SmolLM2-135M)", "",
             f"- hardware: {platform.machine()}, {torch.get_num_threads()} torch threads, "
             f"torch {torch.__version__}; `python benchmarks/weights.py`", ""]  # fmt: skip
    if not args.skip_speed:
        sp = speed(args.widths, args.tokens, args.reps, chats)
        lines += [f"Decode tokens/s (all requests together; {args.tokens} tokens each, rows mode, "
                  f"eager, greedy; median of {args.reps} interleaved runs):", "",
                  "| format | " + " | ".join(f"width {w}" for w in args.widths) + " |",
                  "|---|" + "---|" * len(args.widths)]  # fmt: skip
        for f in FORMATS:
            cells = [f"{sp[f, w]:.0f} ({sp[f, w] / sp['fp32', w]:.2f}x)" for w in args.widths]
            lines.append(f"| {f} | " + " | ".join(cells) + " |")
        lines.append("")
    q = quality(chats, texts, args.agree_tokens)
    n_tok = sum(len(t) - 1 for t in texts)
    lines += [f"Quality: greedy agreement with fp32 (teacher-forced, {len(chats)} prompts x "
              f"{args.agree_tokens} tokens); perplexity over {len(texts)} MT-bench turns "
              f"({n_tok} predicted tokens):", "",
              "| format | agreement with fp32 | perplexity |", "|---|---|---|"]  # fmt: skip
    for name, (same, total, ppl) in q.items():
        agree = f"{same}/{total} ({100 * same / total:.2f}%)" if total else "-"
        lines.append(f"| {name} | {agree} | {ppl:.3f} |" if ppl else f"| {name} | {agree} | n/a |")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
