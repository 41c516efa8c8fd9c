"""Without parafill's CPU kernels (no C compiler, or PARAFILL_KERNELS=0) the engine runs torch's:
packed weights in torch's int4 format, float64 attention, and rows and tree packing still give
the tokens of one-at-a-time decoding. Run in a fresh process, since the kernels load once per
process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
from engine_ref import Run, drain, greedy, tiny
from parafill.backends.engine import kernels
from parafill.backends.engine.engine import Engine, EngineConfig
from parafill.backends.engine.model import CompactLM, attention_kind
from parafill.backends.engine.quant import quantize

lm = CompactLM(tiny("llama"), 256)
quantize(lm, "int4")
prompts = [[1, 5, 9, 12, 7], [3, 4, 200, 17, 6, 8, 2], [9, 9, 1]]
out = {{}}
for mode in ("rows", "tree", "solo"):
    eng = Engine(lm, EngineConfig(mode="rows" if mode == "solo" else mode, budget_tokens=512,
                                  rows=4, retain=False))
    toks = []
    for batch in ([[p] for p in prompts] if mode == "solo" else [prompts]):
        run = Run()
        ids = [eng.submit(p, greedy(16)) for p in batch]
        drain(eng, run, ids)
        toks += [run.tokens[i] for i in ids]
    out[mode] = toks
print(json.dumps({{"available": kernels.available(), "kind": lm.layers[0].qkv.kind,
                  "attention": attention_kind(lm, "auto"), "cache": str(eng.cache.k.dtype),
                  "tokens": out}}))
"""


def test_without_the_kernels_torchs_path_stays_exact() -> None:
    env = {**os.environ, "PARAFILL_KERNELS": "0"}
    tests = str(Path(__file__).parent)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(tests=tests)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["available"] is False
    assert (got["kind"], got["attention"], got["cache"]) == ("int4", "fp64", "torch.float64")
    tokens = got["tokens"]
    assert tokens["rows"] == tokens["solo"] and tokens["tree"] == tokens["solo"]
    assert all(len(t) == 16 for t in tokens["solo"])
