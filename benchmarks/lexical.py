"""Lexical acceptance (lossy): speed against quality, side by side with exact decoding.

    pip install rouge-score==0.1.2       # (the `bench` extra)
    python benchmarks/lexical.py [--limit 20] [--max-tokens 128] [--taus 0.4 0.3 0.2]
    # -> benchmarks/results/lexical_cpu.md

`Decoding.lexical = tau` keeps a drafted token the model gives probability >= tau even where
greedy decoding would choose another, so a confident drafted run is accepted as a unit. Its
output differs from autoregressive decoding; this script says by how much. The embedded
SmolLM2-135M-Instruct, fp32, rows mode, width 1 (one request at a time), greedy, EOS honoured;
the first --limit MT-bench questions (benchmarks/data/mt_bench_first20.jsonl, Apache-2.0).
Per filler and threshold: target forwards, tokens per forward, wall time against plain
autoregressive decoding; quality against the autoregressive answers: identical answers, the
share of tokens before the first difference, and ROUGE-L F1 of the answer texts
(`rouge_score`, Google's implementation). tau 0 is the exact filler (checked equal to
autoregressive here).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from rouge_score import rouge_scorer

from parafill.backends.engine.engine import Engine, EngineConfig
from parafill.backends.engine.fallback import build_engine
from parafill.backends.engine.sampling import GenParams
from parafill.backends.engine.weights import default_gguf, load
from parafill.fillers import make

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "benchmarks/data/mt_bench_first20.jsonl"


def build(hf: torch.nn.Module, speculate: str) -> Engine:
    cfg = EngineConfig(budget_tokens=2048, rows=1, retain=False, speculate=speculate)  # type: ignore[arg-type]
    eng = build_engine(hf, cfg, 4096, lambda _m: None, "fp32", default_gguf())
    assert isinstance(eng, Engine)
    return eng


def decode(
    hf: torch.nn.Module, prompts: list[list[int]], filler: str, tau: float, a: argparse.Namespace
) -> dict:
    """Each prompt alone, in turn, on a fresh engine; outputs, forwards and seconds."""
    eng = build(hf, a.speculate)
    outs, t0 = [], time.perf_counter()
    for p in prompts:
        params = GenParams(a.max_tokens, eos_ids=a.eos, lexical=tau)
        i = eng.submit(p, params, make(filler))
        got: list[int] = []
        while True:
            done = False
            for o in eng.step():
                if o.seq_id == i:
                    got.extend(o.tokens)
                    done = done or o.finish is not None
            if done:
                break
        outs.append(got)
    return {"outs": outs, "secs": time.perf_counter() - t0, "steps": eng.steps}


def prefix_share(out: list[int], ref: list[int]) -> float:
    n = 0
    for x, y in zip(out, ref, strict=False):
        if x != y:
            break
        n += 1
    return n / max(1, len(ref))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--fillers", nargs="+", default=["ngram", "jacobi", "self"])
    # "always": every drafted token is verified, so what the threshold keeps is visible (with
    # "auto" the drafting policy, which learns from measured step times, drafted in one run
    # and not in the next at width 1 on this CPU)
    ap.add_argument("--speculate", default="always")
    ap.add_argument("--taus", type=float, nargs="+", default=[0.4, 0.3, 0.2])
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/lexical_cpu.md"))
    a = ap.parse_args()
    torch.set_grad_enabled(False)
    hf, tok = load(None)
    a.eos = frozenset({int(tok.eos_token_id)})
    questions = [json.loads(x)["turns"][0] for x in DATA.read_text().splitlines()][: a.limit]
    prompts = []
    for q in questions:
        ids = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)
        prompts.append([int(i) for i in (ids if isinstance(ids, list) else ids["input_ids"])])
    decode(hf, prompts[:2], "autoregressive", 0.0, a)  # warm-up: every step shape once
    ref = decode(hf, prompts, "autoregressive", 0.0, a)
    texts = [tok.decode(o, skip_special_tokens=True) for o in ref["outs"]]
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    lines = [
        "# Lexical acceptance (lossy) vs exact decoding (CPU)",
        "",
        f"- hardware: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; `python benchmarks/lexical.py`",
        f"- embedded SmolLM2-135M-Instruct fp32, width 1, greedy, {a.max_tokens} tokens max, "
        f"{len(prompts)} MT-bench questions, drafting `speculate={a.speculate}`; quality "
        "against the autoregressive answers",
        "",
        "| filler | tau | tokens | forwards | tokens/forward | wall s | vs AR | identical "
        "| tokens before first difference | ROUGE-L F1 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    toks = sum(len(o) for o in ref["outs"])
    lines.append(f"| autoregressive | - | {toks} | {ref['steps']} | {toks / ref['steps']:.2f} "
                 f"| {ref['secs']:.1f} | 1.00x | - | - | - |")  # fmt: skip
    print(lines[-1], flush=True)
    for filler in a.fillers:
        for tau in [0.0, *a.taus]:
            r = decode(hf, prompts, filler, tau, a)
            if tau == 0.0 and r["outs"] != ref["outs"]:
                raise SystemExit(f"{filler} without lexical acceptance differs from AR")
            n = sum(len(o) for o in r["outs"])
            same = sum(o == g for o, g in zip(r["outs"], ref["outs"], strict=True))
            share = statistics.mean(
                prefix_share(o, g) for o, g in zip(r["outs"], ref["outs"], strict=True)
            )
            rouge = statistics.mean(
                scorer.score(t, tok.decode(o, skip_special_tokens=True))["rougeL"].fmeasure
                for t, o in zip(texts, r["outs"], strict=True)
            )
            lines.append(
                f"| {filler} | {tau:g} | {n} | {r['steps']} | {n / r['steps']:.2f} "
                f"| {r['secs']:.1f} | {ref['secs'] / r['secs']:.2f}x | {same}/{len(prompts)} "
                f"| {100 * share:.1f}% | {rouge:.3f} |"
            )
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
