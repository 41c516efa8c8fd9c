"""Detokenizing one stream token by token: the windowed Detokenizer vs decoding every id again.

    python benchmarks/detok.py [--tokens 128 512 2048]

The embedded SmolLM2 tokenizer, English text; microseconds per token (on the event loop's
thread, once per token of every stream), both ways side by side in one run.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

from transformers import AutoTokenizer

from parafill.backends.detok import Detokenizer
from parafill.backends.engine.weights import resolve

TEXT = (
    "Skeleton-of-thought asks the model for an outline first, then writes every point at "
    "the same time; the answer arrives sooner when the points are long. "
)


def whole(tok: object, ids: list[int]) -> float:
    """The old way: the whole output decoded again for each new token."""
    t0 = time.perf_counter()
    for n in range(1, len(ids) + 1):
        tok.decode(ids[:n], skip_special_tokens=True)  # type: ignore[attr-defined]
    return (time.perf_counter() - t0) / len(ids) * 1e6


def windowed(tok: object, ids: list[int]) -> float:
    detok = Detokenizer(tok, ["<END>"])  # type: ignore[arg-type]
    t0 = time.perf_counter()
    for n, i in enumerate(ids):
        detok.add([i], final=n == len(ids) - 1)
    return (time.perf_counter() - t0) / len(ids) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, nargs="+", default=[128, 512, 2048])
    a = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(resolve(None))
    ids = tok.encode(TEXT * 200, add_special_tokens=False)
    print(f"# detokenizing, us per token ({platform.machine()}, {os.cpu_count()} cores)\n")
    print("| output tokens | whole decode per token | windowed | ratio |")
    print("|---|---|---|---|")
    for n in a.tokens:
        old, new = whole(tok, ids[:n]), windowed(tok, ids[:n])
        print(f"| {n} | {old:.0f} | {new:.0f} | {old / new:.1f}x |")


if __name__ == "__main__":
    main()
