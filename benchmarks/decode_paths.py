"""Which decode step is leanest on this CPU, per weight format: the eager step, the static-shape
step (`EngineConfig(decode="static")`) and the static step under torch.compile
(`compile=True`), side by side, plus a profile of the eager step at width 1.

    python benchmarks/decode_paths.py [--weights int4] [--widths 1 8]
    # -> benchmarks/results/decode_paths_cpu.md

Tokens/s of all requests together (64 tokens each, greedy, the same chat prompt), each path
warmed (and compiled) first, paths interleaved, median of --reps.
"""

from __future__ import annotations

import argparse
import platform
import statistics
from pathlib import Path

import torch
from torch.profiler import profile
from weights import _HF, decode_rate

from parafill.backends.engine.engine import Engine, EngineConfig
from parafill.backends.engine.fallback import build_engine
from parafill.backends.engine.sampling import GenParams
from parafill.backends.engine.weights import default_gguf, load

ROOT = Path(__file__).resolve().parent.parent
PATHS = {
    "eager": {},
    "static": {"decode": "static"},
    "static + torch.compile": {"decode": "static", "compile": True},
}


def engine(fmt: str, rows: int, **kw: object) -> Engine:
    cfg = EngineConfig(budget_tokens=rows * 512, rows=rows, **kw)  # type: ignore[arg-type]
    eng = build_engine(_HF[0], cfg, 4096, lambda _m: None, fmt, default_gguf())
    assert isinstance(eng, Engine)
    return eng


def top_ops(fmt: str, prompt: list[int], steps: int = 20, rows: int = 12) -> list[str]:
    """The eager width-1 step's most expensive ops (self CPU time per step)."""
    eng = engine(fmt, 1)
    eng.submit(prompt, GenParams(steps + 40))
    for _ in range(10):
        eng.step()
    with profile() as prof:
        for _ in range(steps):
            eng.step()
    avg = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in avg) / steps / 1e3
    out = [f"Eager step at width 1 ({fmt}), profiled: {total:.2f} ms of op time per step", "",
           "| op | ms per step | calls per step |", "|---|---|---|"]  # fmt: skip
    out += [
        f"| `{e.key}` | {e.self_cpu_time_total / steps / 1e3:.3f} | {e.count / steps:.0f} |"
        for e in avg[:rows]
    ]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", nargs="+", default=["int4", "fp32"])
    ap.add_argument("--widths", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/decode_paths_cpu.md"))
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    hf, tok = load(None)
    _HF.append(hf)
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "Write a story about a robot."}], add_generation_prompt=True
    )
    prompt = [int(i) for i in (chat if isinstance(chat, list) else chat["input_ids"])]
    lines = ["# Decode paths on this CPU", "",
             f"- hardware: {platform.machine()}, {torch.get_num_threads()} torch threads, "
             f"torch {torch.__version__}; `python benchmarks/decode_paths.py`", "",
             "| weights | width | " + " | ".join(PATHS) + " |",
             "|---|---|" + "---|" * len(PATHS)]  # fmt: skip
    for fmt in args.weights:
        for w in args.widths:
            engines = {k: engine(fmt, w, **v) for k, v in PATHS.items()}
            for e in engines.values():
                decode_rate(e, [prompt] * w, 16)  # warm up, compile
            got: dict[str, list[float]] = {k: [] for k in PATHS}
            for _ in range(args.reps):
                for k, e in engines.items():
                    got[k].append(decode_rate(e, [prompt] * w, 64))
            cells = [f"{statistics.median(v):.0f} tok/s" for v in got.values()]
            lines.append(f"| {fmt} | {w} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    lines += ["", *top_ops(args.weights[0], prompt)]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
