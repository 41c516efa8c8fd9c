"""n choices from one prompt vs the same n asked one after another, on `parafill serve`.

    python benchmarks/serve_n.py [--n 1,4,8,16] [--max-tokens 64]

Starts `parafill serve` on 127.0.0.1, then for each n: one chat request with `n` (the engine
prefills the prompt once and decodes the n choices in the same steps) against n single
requests in a row with seeds seed..seed+n-1 (the same tokens: choice i is the single answer
with seed + i, which the script checks). Sampled, temperature 0.8, top-p 0.95.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch
from openai import OpenAI
from serve_load import MODEL, free_port, start_server

PROMPT = "Write a short poem about the sea."
OUT = Path(__file__).parent / "results" / "serve_n_cpu.md"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", default="1,4,8,16")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--log", default="/tmp/parafill_serve_n.log")
    ap.add_argument("--note", default="machine state not stated")
    a = ap.parse_args()
    ns = [int(x) for x in a.n.split(",")]
    a.levels = [max(ns)]  # serve_load.start_server sizes --rows from the largest level
    port = free_port()
    proc = start_server(a, port, Path(a.log))
    kw = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}],
          "max_tokens": a.max_tokens, "temperature": 0.8, "top_p": 0.95}
    lines = [
        "# n choices in one request vs n requests in a row (`parafill serve`)\n",
        f"hardware: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"
        f" (CPU); {a.note}. {MODEL} fp32, T 0.8, top-p 0.95, max_tokens {a.max_tokens}, "
        f"prompt {PROMPT!r}.\n",
        "| n | one request with n s | n requests in a row s | speed-up | tokens | same texts |",
        "|---|---|---|---|---|---|",
    ]
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", timeout=600)
        client.chat.completions.create(**{**kw, "max_tokens": 4})  # warm-up
        for n in ns:
            t0 = time.perf_counter()
            many = client.chat.completions.create(n=n, seed=100, **kw)
            t_many = time.perf_counter() - t0
            t0 = time.perf_counter()
            singles = [
                client.chat.completions.create(seed=100 + i, **kw).choices[0].message.content
                for i in range(n)
            ]
            t_row = time.perf_counter() - t0
            same = sum(c.message.content == s for c, s in zip(many.choices, singles, strict=True))
            tokens = many.usage.completion_tokens if many.usage else 0
            lines.append(
                f"| {n} | {t_many:.2f} | {t_row:.2f} | {t_row / t_many:.2f}× | {tokens} "
                f"| {same}/{n} |"
            )
            print(lines[-1], flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    Path(a.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
