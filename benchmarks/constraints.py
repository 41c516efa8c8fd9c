"""llguidance vs xgrammar on this machine with the SmolLM2 tokenizer (vocab 49,152).

Measures, side by side: tokenizer-info build, compile of a JSON schema / a regex / a grammar
(to the first mask: llguidance compiles lazily, so "compile" alone would flatter it), a span-of-
document constraint for a tweet and a page, one bitmask fill per decode step at width 1 / 8 / 32
(each library's batched API), accept and rollback per token, and applying the bitmask to logits.
Run: python benchmarks/constraints.py  (quiet CPU; ~1 minute)
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import llguidance
import llguidance.hf
import llguidance.torch as llt
import torch
import xgrammar as xgr
from transformers import AutoTokenizer

from parafill.backends.engine.weights import resolve
from parafill.constraints import apply_bitmask

SCHEMA = {
    "type": "object",
    "properties": {
        "points": {
            "type": "array",
            "minItems": 2,
            "maxItems": 8,
            "items": {"type": "string", "maxLength": 80},
        },
        "count": {"type": "integer", "minimum": 0},
        "done": {"type": "boolean"},
    },
    "required": ["points", "count", "done"],
    "additionalProperties": False,
}
REGEX = r"(19|20)\d\d-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])( [A-Z][a-z]+){1,3}"
GBNF = r"""root ::= item item+
item ::= [1-9] [0-9]? ". " word (" " word)* "\n"
word ::= [A-Za-z,;'-]+
"""
TWEET = "Heading to the Empire State Building with @jsmith before the Knicks game at MSG tonight!"
PAGE_WORDS = 600


def page() -> str:
    words = (
        "the city council of New York met on Monday with Apple and Google to discuss the "
        "new park near Central Station while Maria Lopez from Paris presented her plan"
    ).split()
    return " ".join(
        words[(i * 7) % len(words)] + ("." if i % 13 == 12 else "") for i in range(PAGE_WORDS)
    )


def timed(fn: Callable[[], Any], repeat: int = 5) -> float:
    """Median wall time of fn() in ms."""
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(out)


def instances(n: int) -> list[str]:
    return [
        json.dumps(
            {
                "points": [f"Point {i} about topic {k}" for i in range(2 + k % 5)],
                "count": 10 * k + 3,
                "done": k % 2 == 0,
            }
        )
        for k in range(n)
    ]


class Llg:
    name = f"llguidance {importlib.metadata.version('llguidance')}"

    def __init__(self, hf: Any) -> None:
        t0 = time.perf_counter()
        self.tok = llguidance.hf.from_tokenizer(hf, n_vocab=len(hf))
        self.info_ms = (time.perf_counter() - t0) * 1e3
        self.vocab = len(hf)
        self.executor = llguidance.LLExecutor()

    def compile(self, kind: str, src: str) -> Any:
        conv = {
            "json": llguidance.LLMatcher.grammar_from_json_schema,
            "regex": llguidance.LLMatcher.grammar_from_regex,
            "gbnf": lambda s: llguidance.grammar_from("gbnf", s),
            "lark": llguidance.LLMatcher.grammar_from_lark,
        }[kind]
        m = llguidance.LLMatcher(self.tok, conv(src), log_level=0)
        assert not m.is_error(), m.get_error()
        return m

    def first_mask(self, compiled: Any) -> None:
        llt.fill_next_token_bitmask(compiled, llt.allocate_token_bitmask(1, self.vocab))

    def matchers(self, compiled: Any, n: int) -> list[Any]:
        return [compiled.deep_copy() for _ in range(n)]

    def fill(self, ms: list[Any], bitmask: torch.Tensor) -> None:
        llt.fill_next_token_bitmask_par(self.executor, [(m, i) for i, m in enumerate(ms)], bitmask)

    def accept(self, m: Any, t: int) -> None:
        assert m.consume_token(t), m.get_error()

    def rollback(self, m: Any, n: int) -> None:
        m.rollback(n)

    def span_grammar(self, text: str) -> tuple[str, str]:
        return "lark", "start: %regex " + json.dumps({"substring_words": text})

    def apply(self, logits: torch.Tensor, bitmask: torch.Tensor) -> None:
        llt.apply_token_bitmask_inplace(logits, bitmask)


class Xgr:
    name = f"xgrammar {importlib.metadata.version('xgrammar')}"

    def __init__(self, hf: Any) -> None:
        t0 = time.perf_counter()
        self.info = xgr.TokenizerInfo.from_huggingface(hf, vocab_size=len(hf))
        self.info_ms = (time.perf_counter() - t0) * 1e3
        self.vocab = len(hf)
        self.compiler = xgr.GrammarCompiler(
            self.info, max_threads=os.cpu_count() or 1, cache_enabled=False
        )
        self.batch = xgr.BatchGrammarMatcher()

    def compile(self, kind: str, src: str) -> Any:
        return {
            "json": self.compiler.compile_json_schema,
            "regex": self.compiler.compile_regex,
            "gbnf": self.compiler.compile_grammar,
            "lark": self.compiler.compile_lark,
        }[kind](src)

    def first_mask(self, compiled: Any) -> None:
        xgr.GrammarMatcher(compiled).fill_next_token_bitmask(
            xgr.allocate_token_bitmask(1, self.vocab)
        )

    def matchers(self, compiled: Any, n: int) -> list[Any]:
        return [xgr.GrammarMatcher(compiled, max_rollback_tokens=64) for _ in range(n)]

    def fill(self, ms: list[Any], bitmask: torch.Tensor) -> None:
        self.batch.batch_fill_next_token_bitmask(ms, bitmask)

    def accept(self, m: Any, t: int) -> None:
        assert m.accept_token(t)

    def rollback(self, m: Any, n: int) -> None:
        m.rollback(n)

    def span_grammar(self, text: str) -> tuple[str, str]:
        # no substring facility: an EBNF trie over word spans of up to 6 words
        words = text.split(" ")
        spans = {
            " ".join(words[i:j])
            for i in range(len(words))
            for j in range(i + 1, min(len(words), i + 6) + 1)
        }
        return "gbnf", "root ::= " + " | ".join(json.dumps(s) for s in sorted(spans))

    def apply(self, logits: torch.Tensor, bitmask: torch.Tensor) -> None:
        xgr.apply_token_bitmask_inplace(logits, bitmask)


def decode_step_ms(lib: Any, compiled: Any, width: int, hf: Any) -> float:
    """Mean ms per step to fill the (width, vocab/32) bitmask over whole JSON generations."""
    seqs = [hf.encode(s) for s in instances(width)]
    ms = lib.matchers(compiled, width)
    bitmask = xgr.allocate_token_bitmask(width, lib.vocab)
    steps, total = min(len(s) for s in seqs), 0.0
    for k in range(steps):
        t0 = time.perf_counter()
        lib.fill(ms, bitmask)
        total += time.perf_counter() - t0
        for m, s in zip(ms, seqs, strict=True):
            lib.accept(m, s[k])
    return total / steps * 1e3


def token_ops_us(lib: Any, compiled: Any, hf: Any) -> tuple[float, float, float]:
    """(accept, rollback 1, accept 4 + rollback 4) in µs per call, along one JSON instance."""
    seq = hf.encode(instances(1)[0])
    m = lib.matchers(compiled, 1)[0]
    t0 = time.perf_counter()
    for t in seq:
        lib.accept(m, t)
    acc = (time.perf_counter() - t0) / len(seq) * 1e6
    m2 = lib.matchers(compiled, 1)[0]
    rb, draft = 0.0, 0.0
    for k, t in enumerate(seq[:-4]):
        lib.accept(m2, t)
        t0 = time.perf_counter()
        lib.rollback(m2, 1)
        rb += time.perf_counter() - t0
        lib.accept(m2, t)
        t0 = time.perf_counter()
        for d in seq[k + 1 : k + 5]:
            lib.accept(m2, d)
        lib.rollback(m2, 4)
        draft += time.perf_counter() - t0
    n = len(seq) - 4
    return acc, rb / n * 1e6, draft / n * 1e6


def report_lib(lib: Any, hf: Any) -> dict[str, str]:
    row: dict[str, str] = {"tokenizer info build (ms)": f"{lib.info_ms:.0f}"}
    for label, kind, src in [
        ("JSON schema", "json", json.dumps(SCHEMA)),
        ("regex", "regex", REGEX),
        ("GBNF grammar", "gbnf", GBNF),
        ("span_of tweet", *lib.span_grammar(TWEET)),
        ("span_of page (600 words)", *lib.span_grammar(page())),
    ]:
        comp = timed(lambda k=kind, s=src: lib.compile(k, s), repeat=3)
        first = timed(lambda k=kind, s=src: lib.first_mask(lib.compile(k, s)), repeat=3)
        row[f"compile {label} (ms)"] = f"{comp:.1f}"
        row[f"compile + first mask {label} (ms)"] = f"{first:.1f}"
    compiled = lib.compile("json", json.dumps(SCHEMA))
    for width in (1, 8, 32):
        decode_step_ms(lib, compiled, width, hf)  # warm
        row[f"fill bitmask / step, width {width} (ms)"] = (
            f"{statistics.median(decode_step_ms(lib, compiled, width, hf) for _ in range(3)):.3f}"
        )
    acc, rb, draft = token_ops_us(lib, compiled, hf)
    row["accept 1 token (µs)"] = f"{acc:.1f}"
    row["rollback 1 token (µs)"] = f"{rb:.1f}"
    row["draft check: accept 4 + rollback 4 (µs)"] = f"{draft:.1f}"
    for width in (1, 8, 32):
        logits = torch.randn(width, lib.vocab)
        bm = xgr.allocate_token_bitmask(width, lib.vocab)
        key = f"apply bitmask to logits, width {width} (ms)"
        try:
            lib.apply(logits.clone(), bm)  # warm (llguidance's helper is torch.compile'd)
            row[key] = f"{timed(lambda lg=logits, b=bm: lib.apply(lg, b), repeat=20):.3f}"
        except Exception as exc:  # noqa: BLE001 -- report, do not stop the run
            row[key] = f"fails: {type(exc).__name__}"
    return row


def hardware() -> str:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in open("/proc/cpuinfo")
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}"
    )


def main() -> None:
    hf = AutoTokenizer.from_pretrained(str(resolve(None)), local_files_only=True)
    libs = [Llg(hf), Xgr(hf)]
    rows = [report_lib(lib, hf) for lib in libs]
    print(f"# constraint libraries on CPU\n\nHardware: {hardware()}  ")
    print(
        f"Tokenizer: SmolLM2-135M-Instruct, vocab {len(hf)}; JSON schema decode over "
        f"{len(hf.encode(instances(1)[0]))}+ tokens per row\n"
    )
    print("| measure | " + " | ".join(lib.name for lib in libs) + " |")
    print("|---|" + "---|" * len(libs))
    for key in rows[0]:
        print(f"| {key} | " + " | ".join(r[key] for r in rows) + " |")
    own = []
    for width in (1, 8, 32):
        logits, bm = torch.randn(width, len(hf)), xgr.allocate_token_bitmask(width, len(hf))
        own.append(f"{timed(lambda lg=logits, b=bm: apply_bitmask(lg, b), repeat=20):.3f}")
    print(
        f"\nparafill.constraints.apply_bitmask (plain tensor ops), width 1 / 8 / 32: "
        f"{' / '.join(own)} ms"
    )


if __name__ == "__main__":
    main()
