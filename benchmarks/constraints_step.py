"""Per-step cost of a JSON-schema output constraint in the engine (target: at most 5% of a step).

    python benchmarks/constraints_step.py [--widths 1,8,32] [--steps 24] [--reps 3] [--profile]

The embedded SmolLM2-135M-Instruct (fp32 on CPU, bf16 on CUDA), rows mode, W sequences
decoding greedily from the same W chat prompts, once plain and once with the same JSON schema
on every sequence; plain and constrained runs alternate, `--reps` times each. A run times
`--steps` decode steps after the prefill and two warm-up steps, and only while all W
sequences are live (plain runs have no end token, so they never stop; a constrained run that
completes its JSON early is cut there and its step count is shown). Reported: ms per step
(the best run's mean, and the median over all timed steps of all runs), tokens/s, and the
constrained / plain ratio. `--profile` (a separate pass after the timing, its wrappers add a
little) splits the constrained step: forward, `decide` (choosing the tokens), inside it
`_constrain` and its mask fill / apply_bitmask, and the matchers' per-token accept.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch

from parafill import constraints as C
from parafill.backends.engine import runner as runner_mod
from parafill.backends.engine import verify
from parafill.backends.engine.engine import Engine, EngineConfig
from parafill.backends.engine.model import CompactLM
from parafill.backends.engine.sampling import GenParams
from parafill.backends.engine.weights import load

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "country": {"type": "string"},
        "description": {"type": "string", "minLength": 200},
        "sights": {"type": "array", "items": {"type": "string"}, "minItems": 3},
        "population": {"type": "integer"},
    },
    "required": ["name", "country", "description", "sights", "population"],
    "additionalProperties": False,
}
CITIES = (
    "Paris Tokyo Lima Cairo Oslo Quito Dakar Hanoi Perth Milan Porto Seoul Accra Delhi Rome"
    " Vienna Lagos Doha Kyoto Bergen Cusco Havana Nairobi Riga Tunis Sofia Zurich Lyon Busan"
    " Cork Fez Baku"
).split()


def prompts(tok: Any, width: int) -> list[list[int]]:
    out = []
    for city in CITIES[:width]:
        ask = f"Describe {city} as JSON: name, country, a long description, sights, population."
        text = tok.apply_chat_template(
            [{"role": "user", "content": ask}], add_generation_prompt=True, tokenize=False
        )
        out.append(tok.encode(text, add_special_tokens=False))
    return out


def run(
    hf: Any,
    tok: Any,
    width: int,
    steps: int,
    compiled: C.Compiled | None,
    device: str,
    start: Callable[[], None] | None = None,
) -> tuple[list[float], int]:
    """Per-step seconds of the timed steps, and the tokens they emitted; `start` is called
    when the timed steps begin."""
    cfg = EngineConfig(rows=width, budget_tokens=width * 768, decode="eager", speculate="off")
    eng = Engine(CompactLM(hf, 4096), cfg)
    eos = frozenset({int(tok.eos_token_id)}) if compiled is not None else frozenset()
    ids = [
        eng.submit(p, GenParams(steps + 64, eos_ids=eos), constraint=compiled)
        for p in prompts(tok, width)
    ]
    while any(s.fed < len(s.prompt) for s in eng.live):  # prefill
        eng.step()
    for _ in range(2):
        eng.step()
    times, tokens = [], 0
    if start is not None:
        start()
    for _ in range(steps):
        sync(device)
        t0 = time.perf_counter()
        outs = eng.step()
        sync(device)
        if any(o.finish for o in outs) or len(outs) < len(ids):
            break  # a sequence ended: the step no longer has W rows
        times.append(time.perf_counter() - t0)
        tokens += sum(len(o.tokens) for o in outs)
    for i in ids:
        eng.cancel(i)
    eng.step()
    return times, tokens


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.processor() or platform.machine()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class Profile:
    """Wall time spent in named functions (wrapped in place while the profile runs)."""

    def __init__(self) -> None:
        self.total: dict[str, float] = defaultdict(float)
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.total[label] += time.perf_counter() - t0

        setattr(owner, name, timed)
        self._undo.append(lambda: setattr(owner, name, original))

    def restore(self) -> None:
        while self._undo:
            self._undo.pop()()


def profile(
    hf: Any, tok: Any, width: int, steps: int, compiled: C.Compiled | None, device: str
) -> tuple[int, dict[str, float]]:
    """Steps timed, and ms per step in each wrapped function over the timed steps."""
    p = Profile()
    p.wrap(CompactLM, "forward", "forward")
    p.wrap(runner_mod, "decide", "decide (choose tokens)")
    p.wrap(verify, "_constrain", "  _constrain")
    p.wrap(C, "fill_batch", "    fill_batch (llguidance)")
    p.wrap(C, "allocate_bitmask", "    allocate_bitmask")
    p.wrap(C, "apply_bitmask", "    apply_bitmask")
    p.wrap(C.Matcher, "accept", "matcher.accept (settle)")
    try:
        times, _ = run(hf, tok, width, steps, compiled, device, p.total.clear)
    finally:
        p.restore()
    ran = len(times) + (len(times) < steps)  # a step that ended a sequence ran but is not timed
    return len(times), {k: v / ran * 1e3 for k, v in p.total.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--widths", default="1,8,32")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    hf, tok = load(None, device, dtype)
    info = C.tokenizer_info(tok, n_vocab=hf.config.vocab_size)
    compiled = C.compile(C.json_schema(SCHEMA), info)
    if device == "cuda":
        hw = torch.cuda.get_device_name()
    else:
        hw = f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.get_num_threads()} threads"
    print(f"hardware: {hw}; torch {torch.__version__}, Python {platform.python_version()}")
    print(f"model: SmolLM2-135M-Instruct (embedded), {dtype}; schema: {json.dumps(SCHEMA)}")
    print(f"rows mode, eager decode, greedy, no drafts; {a.steps} timed steps x {a.reps} reps")
    print()
    print(
        "| width | plain ms/step | JSON ms/step | ratio (best) | plain median | JSON median"
        " | ratio (median) | plain tok/s | JSON tok/s | JSON steps timed |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for w in (int(x) for x in a.widths.split(",")):
        res: dict[str, list[tuple[list[float], int]]] = {"plain": [], "json": []}
        for _ in range(a.reps):
            res["plain"].append(run(hf, tok, w, a.steps, None, device))
            res["json"].append(run(hf, tok, w, a.steps, compiled, device))
        best = {k: min(sum(t) / len(t) for t, _ in v if t) * 1e3 for k, v in res.items()}
        med = {k: statistics.median(x for t, _ in v for x in t) * 1e3 for k, v in res.items()}
        tps = {k: max(n / sum(t) for t, n in v if t) for k, v in res.items()}
        counts = "/".join(str(len(t)) for t, _ in res["json"])
        print(
            f"| {w} | {best['plain']:.2f} | {best['json']:.2f} | {best['json'] / best['plain']:.3f}"
            f" | {med['plain']:.2f} | {med['json']:.2f} | {med['json'] / med['plain']:.3f}"
            f" | {tps['plain']:.1f} | {tps['json']:.1f} | {counts} |",
            flush=True,
        )
    if a.profile:
        print()
        print("Profile: ms per timed step in each function (one run each; wrappers add a little)")
        for w in (int(x) for x in a.widths.split(",")):
            for name, c in (("plain", None), ("json", compiled)):
                n, per_step = profile(hf, tok, w, a.steps, c, device)
                parts = ", ".join(f"{k.strip()} {v:.3f}" for k, v in per_step.items())
                print(f"- width {w} {name} ({n} steps): {parts}")


if __name__ == "__main__":
    main()
