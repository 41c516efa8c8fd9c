"""A skeleton-of-thought-shaped request on parafill's engine vs sequential vs HF generate.

    python benchmarks/engine_sot.py [--shape 1.1b] [--prefix 300] [--skeleton 40]
                                    [--branches 8] [--branch-tokens 100]

Random-weight Llama shapes (step time does not depend on weight values), greedy, no EOS, so
every run decodes exactly the same token counts. The request: a shared prefix (question), a
skeleton decoded from it, then N branches whose prompts are prefix + skeleton + a short
point header, each decoding a fixed number of tokens.
  - engine (rows / tree): the branches run together; the prefix + skeleton KV is shared
  - engine sequential: the same branches one after another on the same engine (with the
    prefix cache each branch reuses the finished skeleton's KV; and with it off, for reference)
  - HF generate: skeleton, then each branch with its own generate call (and, for reference,
    all branches as one left-padded batch)
Also the KV bytes each packing holds while all branches are live.
"""

from __future__ import annotations

import argparse
import time

import torch
from engine_step import SHAPES, build, sync

from parafill.backends.engine.engine import Engine, EngineConfig
from parafill.backends.engine.kv import bytes_per_token
from parafill.backends.engine.model import CompactLM
from parafill.backends.engine.sampling import GenParams


def prompts(a, vocab: int) -> tuple[list[int], list[list[int]]]:
    g = torch.Generator().manual_seed(0)
    prefix = torch.randint(3, vocab, (a.prefix,), generator=g).tolist()
    heads = [torch.randint(3, vocab, (8,), generator=g).tolist() for _ in range(a.branches)]
    return prefix, heads


def run_engine(
    model, a, mode: str, parallel: bool, decode: str, retain: bool = True
) -> tuple[float, int, list]:
    """Runs the request twice on one engine and times the second run (steady state: CUDA
    graphs for every (lanes, length) shape the request needs are captured by then), with the
    first run's KV evicted from the prefix cache (no reuse of an identical earlier request)."""
    total = a.prefix + a.skeleton + 8 + a.branch_tokens
    budget = total * (a.branches + 1) + 64
    cfg = EngineConfig(
        mode=mode, budget_tokens=budget, rows=a.branches + 1, decode=decode, retain=retain
    )
    eng = Engine(CompactLM(model, 4096), cfg)
    once(eng, model, a, parallel)
    eng.drop_cached()
    return once(eng, model, a, parallel)


def once(eng: Engine, model, a, parallel: bool) -> tuple[float, int, list]:
    prefix, heads = prompts(a, model.config.vocab_size)
    peak = 0

    def drain(ids: list[int]) -> dict[int, list[int]]:
        nonlocal peak
        out: dict[int, list[int]] = {i: [] for i in ids}
        done: set[int] = set()
        while len(done) < len(ids):
            for o in eng.step():
                out.setdefault(o.seq_id, []).extend(o.tokens)
                if o.finish:
                    done.add(o.seq_id)
            peak = max(peak, int((eng.cache.refs > 0).sum()))
        return out

    sync(a.device)
    t0 = time.perf_counter()
    sk = eng.submit(prefix, GenParams(a.skeleton))
    skeleton = drain([sk])[sk]
    branch_prompts = [prefix + skeleton + h for h in heads]
    tokens = []
    if parallel:
        ids = [eng.submit(p, GenParams(a.branch_tokens)) for p in branch_prompts]
        got = drain(ids)
        tokens = [got[i] for i in ids]
    else:
        for p in branch_prompts:
            i = eng.submit(p, GenParams(a.branch_tokens))
            tokens.append(drain([i])[i])
    sync(a.device)
    return time.perf_counter() - t0, peak, tokens


def run_hf(model, a, batched: bool) -> float:
    prefix, heads = prompts(a, model.config.vocab_size)
    dev = a.device
    kw = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
    sync(dev)
    t0 = time.perf_counter()
    x = torch.tensor([prefix], device=dev)
    sk = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=a.skeleton,
                        min_new_tokens=a.skeleton, **kw)[0, a.prefix:].tolist()
    rows = [prefix + sk + h for h in heads]
    if batched:  # all prompts have the same length: no padding needed
        x = torch.tensor(rows, device=dev)
        model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=a.branch_tokens,
                       min_new_tokens=a.branch_tokens, **kw)
    else:
        for r in rows:
            x = torch.tensor([r], device=dev)
            model.generate(x, attention_mask=torch.ones_like(x),
                           max_new_tokens=a.branch_tokens, min_new_tokens=a.branch_tokens, **kw)
    sync(dev)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="1.1b", choices=sorted(SHAPES))
    ap.add_argument("--prefix", type=int, default=300)
    ap.add_argument("--skeleton", type=int, default=40)
    ap.add_argument("--branches", type=int, default=8)
    ap.add_argument("--branch-tokens", type=int, default=100)
    ap.add_argument("--skip-hf-sequential", action="store_true")
    a = ap.parse_args()
    a.device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if a.device == "cuda" else torch.float32
    hw = torch.cuda.get_device_name() if a.device == "cuda" else f"CPU x{torch.get_num_threads()}"
    model = build(a.shape, a.device, dtype)
    kvb = bytes_per_token(CompactLM(model, 16).shapes, dtype)
    print(f"hardware: {hw}, {a.shape} random weights, {dtype}, torch {torch.__version__}; "
          f"prefix {a.prefix}, skeleton {a.skeleton}, {a.branches} branches x "
          f"{a.branch_tokens} tokens")
    run_engine(model, a, "rows", True, "auto")  # warm-up (allocator, kernels)
    decodes = ["auto", "eager"] if a.device == "cuda" else ["auto"]
    rows: list[tuple[str, float, int | None]] = []
    ref = None
    for decode in decodes:
        for mode in ("rows", "tree"):
            t, peak, toks = run_engine(model, a, mode, True, decode)
            ref = ref or toks
            same = "same tokens" if toks == ref else "TOKENS DIFFER"
            rows.append((f"engine {mode}, parallel ({decode}; {same})", t, peak))
    for retain in (True, False):
        t_seq, _, toks = run_engine(model, a, "rows", False, "auto", retain)
        same = "same tokens" if toks == ref else "TOKENS DIFFER"
        cache = "prefix cache on" if retain else "prefix cache off"
        rows.append((f"engine rows, sequential ({cache}; {same})", t_seq, None))
    rows.append(("HF generate, branches batched", run_hf(model, a, True), None))
    if not a.skip_hf_sequential:
        rows.append(("HF generate, branches one by one", run_hf(model, a, False), None))
    best = min(t for _, t, _ in rows[:2])
    print("| run | wall s | vs best parallel engine | KV held at peak |\n|---|---|---|---|")
    for name, t, peak in rows:
        kv = f"{peak} tokens, {peak * kvb / 2**20:.1f} MiB" if peak is not None else ""
        print(f"| {name} | {t:.3f} | {t / best:.2f}× | {kv} |", flush=True)


if __name__ == "__main__":
    main()
