"""Token-exactness with packed weights (int8 / int4): every packing mode, shared prefixes, the
static decode step and the fillers give the tokens of one-at-a-time autoregressive decoding
with the same weights. Attention is ordered (kernels.c: each query's keys in position order,
fixed-order sums) with fp32 K/V where parafill's CPU kernels are built, float64 elsewhere; with
torch's fp32 attention these prompts flipped tokens under tree packing, prefix sharing and
n-gram or Jacobi verification (1-2 of 9 requests per mode, int4, 48 tokens)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from engine_ref import Run, Smol, drain

from parafill.backends.engine import kernels
from parafill.backends.engine.engine import Engine, EngineConfig
from parafill.backends.engine.gguf_q4 import q4_blocks
from parafill.backends.engine.model import CompactLM, attention_kind, kv_dtype
from parafill.backends.engine.quant import quantize
from parafill.backends.engine.sampling import GenParams
from parafill.backends.engine.weights import default_gguf
from parafill.fillers import make

N = 40
SYSTEM = "You are a helpful assistant who answers carefully and in detail, in plain English."
USERS = (
    "Explain what a prime number is.",
    "List the planets of the solar system.",
    "Describe how a bicycle works.",
    "Name three colours.",
    "Write a haiku about autumn.",
)
SAME = {"budget_tokens": 4096, "rows": 8, "retain": False, "min_share": 10**6}
CASES = {  # name: (mode, engine settings, filler)
    "rows": ("rows", {}, "autoregressive"),
    "tree": ("tree", {}, "autoregressive"),
    "rows-static": ("rows", {"decode": "static"}, "autoregressive"),
    "rows-shared-prefix": ("rows", {"min_share": 16}, "autoregressive"),
    "tree-shared-prefix": ("tree", {"min_share": 16}, "autoregressive"),
    "rows-ngram": ("rows", {"speculate": "always"}, "ngram"),
    "rows-jacobi": ("rows", {"speculate": "always"}, "jacobi"),
    "tree-ngram": ("tree", {"speculate": "always"}, "ngram"),
    "rows-self": ("rows", {"speculate": "always"}, "self"),
}


@pytest.fixture(scope="module")
def packed(smol: Smol) -> dict[str, CompactLM]:
    out = {}
    for fmt in ("int8", "int4"):
        lm = CompactLM(smol[0], 1024)
        quantize(lm, fmt, q4_blocks(default_gguf(), lm))
        out[fmt] = lm
    return out


@pytest.fixture(scope="module")
def prompts(smol: Smol) -> list[list[int]]:
    tok = smol[1]
    out = []
    for user in USERS:
        msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_dict=False)
        out.append(list(ids))
    return out


@pytest.fixture(scope="module")
def reference(
    smol: Smol, packed: dict[str, CompactLM], prompts: list[list[int]]
) -> dict[str, list[list[int]]]:
    """One request at a time, one token per forward, per format."""
    eos = frozenset({int(smol[1].eos_token_id)})
    want = {}
    for fmt, lm in packed.items():
        solo = Engine(lm, EngineConfig(**SAME, speculate="off"))  # type: ignore[arg-type]
        want[fmt] = []
        for p in prompts:
            run = Run()
            i = solo.submit(p, GenParams(N, eos_ids=eos), None)
            drain(solo, run, [i])
            want[fmt].append(run.tokens[i])
    return want


def _decode(lm: CompactLM, case: str, prompts: list[list[int]], eos: frozenset[int]) -> list[Any]:
    mode, extra, filler = CASES[case]
    engine = Engine(lm, EngineConfig(mode=mode, **{**SAME, **extra}))  # type: ignore[arg-type]
    ids = [engine.submit(p, GenParams(N, eos_ids=eos), make(filler)) for p in prompts]
    run = Run()
    drain(engine, run, ids)
    return [run.tokens[i] for i in ids]


RUNS = [("int4", case) for case in CASES] + [
    ("int8", case) for case in ("tree-shared-prefix", "rows-ngram")
]  # int8 (two kernel passes per projection) on the two kinds of mode that flipped most


@pytest.mark.parametrize(("fmt", "case"), RUNS)
def test_packed_weights_are_token_exact_in_every_mode(
    smol: Smol,
    packed: dict[str, CompactLM],
    prompts: list[list[int]],
    reference: dict[str, list[list[int]]],
    fmt: str,
    case: str,
) -> None:
    eos = frozenset({int(smol[1].eos_token_id)})
    assert _decode(packed[fmt], case, prompts, eos) == reference[fmt], (fmt, case)


def test_attention_precision_follows_the_kernels_available(
    smol: Smol, packed: dict[str, CompactLM]
) -> None:
    """Ordered fp32 attention wherever parafill's CPU kernels are built (any x86-64 CPU with
    a C compiler); float64 only for packed weights without them."""
    dense = CompactLM(smol[0], 64)
    ordered = kernels.available()
    assert attention_kind(packed["int4"], "auto") == ("ordered" if ordered else "fp64")
    assert kv_dtype(packed["int4"], "auto") == (torch.float32 if ordered else torch.float64)
    assert kv_dtype(packed["int4"], "native") == torch.float32
    assert kv_dtype(dense, "auto") == torch.float32
    assert kv_dtype(dense, "fp64") == torch.float64
    engine = Engine(packed["int4"], EngineConfig(budget_tokens=64, rows=1))
    assert engine.cache.k.dtype == (torch.float32 if ordered else torch.float64)
    with pytest.raises(ValueError, match="attention must be one of auto, ordered, native, fp64"):
        kv_dtype(dense, "fp16")
    # a byte budget counts float64 K/V: twice the bytes per token
    per_token = 2 * 30 * 3 * 64  # SmolLM2: K and V, 30 layers, 3 KV heads of 64
    wide_cfg = EngineConfig(budget_bytes=2**22, rows=1, attention="fp64")
    wide = Engine(packed["int4"], wide_cfg).config.budget_tokens
    narrow = Engine(dense, EngineConfig(budget_bytes=2**22, rows=1)).config.budget_tokens
    assert (wide, narrow) == (2**22 // (8 * per_token) - 8, 2**22 // (4 * per_token) - 8)
