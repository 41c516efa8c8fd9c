"""Fillers side by side: autoregressive vs ngram vs jacobi vs the model drafters (self,
draft) on the same engine and model.

    python benchmarks/fillers.py [--widths 1 8 32] [--max-tokens 128] [--n 8]
                                 [--fillers autoregressive ngram jacobi self] [--mode rows|tree]
    python benchmarks/fillers.py --model TARGET.gguf --draft-model DRAFT.gguf \
                                 --fillers autoregressive draft self --workloads writing
                                 (the Qwen2.5-Coder pair: python scripts/fetch_qwen_pair.py)

`self`: the target's own weights packed int4 drafting for it (layers calibrated once before
timing, on the vendored calibration answer; printed). `draft`: the --draft-model. The
"drafter forwards" column counts the drafters' forwards (k per drafting step), which the
target's "forwards" do not include.

The embedded SmolLM2-135M-Instruct, fp32, greedy, EOS honoured (every filler writes exactly
the same tokens: checked here, the run fails otherwise). Workloads:
  grounded  MT-bench questions that quote their input (extraction, editing, translating,
            reading a passage) — output copies the input
  ner       PaDeLLM-NER mention nodes over WNUT-16 tweets (the planner's own prompts)
  writing   MT-bench writing questions — open text, little to copy
Width W: the engine holds W sequences at once (W batch rows); max(n, 2W) requests (prompts
cycled) are all submitted at the start and admitted as rows free up (continuous admission),
so the wall time is throughput at width W, not the slowest of one batch. For each output the
8-gram repetition rate (1 - distinct/total) is reported; "loops" counts outputs above 0.4,
whose n-gram drafts are trivially right.

Each width starts with one untimed run (the first filler's): the first run at a width meets
every step shape for the first time, which would count against whichever filler runs first.

`--sot`: a skeleton-of-thought request (the real planner, MT-bench questions) through the
runner, every point node with and without speculation, rows and tree packing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from parafill.backends.engine.engine import Engine, EngineConfig
from parafill.backends.engine.gguf_q4 import q4_blocks
from parafill.backends.engine.model import CompactLM
from parafill.backends.engine.sampling import GenParams
from parafill.backends.engine.selfspec import drafter_model, layers_for
from parafill.backends.engine.weights import default_gguf, load
from parafill.backends.local import CALIBRATION
from parafill.cli.view import repetition
from parafill.fillers import make
from parafill.planners.ner_prompts import SYSTEM as NER_SYSTEM
from parafill.planners.ner_prompts import mention_prompt

DATA = Path(__file__).parent / "data"
GROUNDED = {131, 133, 134, 135, 137, 138, 139, 90, 95, 105}
WNUT = Path(__file__).parents[1].parent / "shared" / "data" / "wnut16_dev.conll"


def hardware() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def mt_bench(ids: set[int] | None, category: str | None) -> list[str]:
    out = []
    for line in (DATA / "mt_bench_dev.jsonl").read_text().splitlines():
        q = json.loads(line)
        if (ids and q["question_id"] in ids) or (category and q["category"] == category):
            if not (ids and category and q["question_id"] in ids):
                out.append(q["turns"][0])
    return out


def tweets(n: int) -> list[tuple[str, str]]:
    """(tweet, one of its gold entity labels) for the first n tweets with an entity."""
    out, words, label = [], [], None
    for line in WNUT.read_text().splitlines() + [""]:
        if not line.strip():
            if words and label:
                out.append((" ".join(words), label))
            words, label = [], None
            if len(out) == n:
                break
            continue
        tok, tag = line.split("\t")
        words.append(tok)
        if tag.startswith("B-") and label is None:
            label = tag[2:]
    return out


def workloads(tok, n: int) -> dict[str, list[list[int]]]:
    def chat(user: str, system: str | None = None) -> list[int]:
        msgs = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user}
        ]
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True)
        return list(ids if isinstance(ids, list) else ids["input_ids"])

    grounded = [chat(q) for q in mt_bench(GROUNDED, None)][:n]
    writing = [chat(q) for q in mt_bench(None, "writing") if "Edit the following" not in q][:n]
    ner = [chat(mention_prompt(t, lab, 1, 1), NER_SYSTEM) for t, lab in tweets(n)]
    return {"grounded": grounded, "ner": ner, "writing": writing}


def run(eng: Engine, prompts: list[list[int]], filler: str, a) -> tuple[float, list[list[int]]]:
    t0 = time.perf_counter()
    ids = [eng.submit(p, GenParams(a.max_tokens, eos_ids=a.eos), make(filler)) for p in prompts]
    out: dict[int, list[int]] = {i: [] for i in ids}
    done: set[int] = set()
    while len(done) < len(ids):
        for o in eng.step():
            out[o.seq_id].extend(o.tokens)
            if o.finish:
                done.add(o.seq_id)
    return time.perf_counter() - t0, [out[i] for i in ids]


def engine(model, cfg: EngineConfig, a) -> Engine:
    eng = Engine(model, cfg, a.draft_lm)
    eng.self_model = a.self_model
    return eng


def measure(model, prompts: list[list[int]], width: int, a) -> dict[str, dict]:
    todo = [prompts[i % len(prompts)] for i in range(max(len(prompts), 2 * width))]
    res = {}
    cfg = EngineConfig(mode=a.mode, budget_tokens=width * 1024 + 64, rows=width,
                       max_seqs=width, retain=False, speculate=a.speculate,
                       self_layers=a.self_layers)
    # untimed warm-up: the first run at a width meets every step shape for the first time
    # (oneDNN builds a kernel per shape), which would count against whichever filler runs first
    run(engine(model, cfg, a), todo, a.fillers[0], a)
    for filler in a.fillers:
        eng = engine(model, cfg, a)
        secs, outs = run(eng, todo, filler, a)
        side = sum(d.forwards for d in eng.model_drafters.values() if d is not None)
        res[filler] = {"secs": secs, "outs": outs, "steps": eng.steps, "side": side,
                       "drafted": eng.drafted, "accepted": eng.accepted}
    return res


def report(name: str, width: int, res: dict[str, dict]) -> list[str]:
    ref = res[next(iter(res))]
    lines = []
    for filler, r in res.items():
        same = r["outs"] == ref["outs"]
        if not same:
            raise SystemExit(f"{name} W={width}: {filler} wrote different tokens than {next(iter(res))}")
        toks = sum(len(o) for o in r["outs"])
        reps = [repetition(o) for o in r["outs"]]
        loops = sum(x > 0.4 for x in reps)
        lines.append(
            f"| {name} | {width} | {filler} | {toks} | {r['steps']} | {r['side']} "
            f"| {toks / max(1, r['steps']):.2f} "
            f"| {r['accepted']}/{r['drafted']} | {r['secs']:.1f} | {ref['secs'] / r['secs']:.2f}x "
            f"| {sum(reps) / len(reps):.2f} | {loops}/{len(reps)} |"
        )
    return lines


async def sot_run(question: str, mode: str, filler: str, a) -> tuple[float, int, str]:
    from parafill.backends.local import LocalBackend, LocalConfig
    from parafill.orchestrator.runner import RunConfig, run_plan
    from parafill.planners.skeleton import SkeletonPlanner

    planner = SkeletonPlanner(max_points=8, point_tokens=a.max_tokens)
    cfg = LocalConfig(mode=mode, retain=False, rows=16)
    async with LocalBackend.open(cfg) as b:
        plan = planner.plan(question)
        r = await run_plan(plan, b, RunConfig(filler=filler), expanders=planner.expanders)
    return r.seconds, r.forward_passes or 0, r.answer


def sot(a) -> None:
    import anyio

    qs = [json.loads(x)["turns"][0] for x in (DATA / "mt_bench_dev.jsonl").read_text().splitlines()
          if json.loads(x)["category"] in ("stem", "humanities")][: a.sot]
    print("\n| SoT request | mode | filler | wall s | forwards | speed-up |")
    print("|---|---|---|---|---|---|")
    for mode in ("rows", "tree"):
        totals: dict[str, list[float]] = {}
        answers: dict[str, list[str]] = {}
        for q in qs:
            for filler in a.fillers:
                secs, fps, ans = anyio.run(sot_run, q, mode, filler, a)
                totals.setdefault(filler, [0.0, 0])
                totals[filler][0] += secs
                totals[filler][1] += fps
                answers.setdefault(filler, []).append(ans)
        ref = next(iter(totals))
        for filler, (secs, fps) in totals.items():
            if answers[filler] != answers[ref]:
                raise SystemExit(f"SoT {mode}: {filler} answered differently than {ref}")
            print(f"| {len(qs)} MT-bench stem/humanities | {mode} | {filler} | {secs:.1f} | "
                  f"{fps} | {totals[ref][0] / secs:.2f}x |", flush=True)


def self_drafter(model: CompactLM, tok, a):
    """The self-drafter's int4 weights and calibrated layers, made before any timing."""
    if "self" not in a.fillers:
        return None, None
    gguf = Path(a.model) if a.model and a.model.endswith(".gguf") else None
    gguf = gguf or (default_gguf() if a.model is None else None)
    drafter = drafter_model(model, q4_blocks(gguf, model) if gguf else None)
    msgs = [{"role": m.role, "content": m.content} for m in CALIBRATION]
    ids = tok.apply_chat_template(msgs)
    ids = list(ids if isinstance(ids, list) else ids["input_ids"])
    return drafter, layers_for(model, ids, drafter)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--widths", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--n", type=int, default=8, help="prompts per workload")
    p.add_argument("--fillers", nargs="+", default=["autoregressive", "ngram", "jacobi"])
    p.add_argument("--workloads", nargs="+", default=["grounded", "ner", "writing"])
    p.add_argument("--mode", default="rows")
    p.add_argument("--speculate", default="auto")
    p.add_argument("--sot", type=int, default=0, help="also: N skeleton-of-thought requests")
    p.add_argument("--model", default=None, help="target (default: the embedded SmolLM2)")
    p.add_argument("--draft-model", default=None, help="the `draft` filler's model")
    a = p.parse_args()
    hf, tok = load(a.model)
    a.eos = frozenset({tok.eos_token_id})
    model = CompactLM(hf, 4096)
    a.draft_lm = CompactLM(load(a.draft_model)[0], 4096) if a.draft_model else None
    a.self_model, a.self_layers = self_drafter(model, tok, a)
    loads = workloads(tok, a.n)
    name = Path(a.model).stem if a.model else "SmolLM2-135M"
    extra = f", draft {Path(a.draft_model).stem}" if a.draft_model else ""
    print(f"# fillers on {hardware()}; {name} fp32{extra}, greedy, max_tokens {a.max_tokens}, "
          f"mode {a.mode}, speculate {a.speculate}")
    if "self" in a.fillers:
        print(f"self-drafter: int4 copy, layers {a.self_layers}")
    print("| workload | width | filler | tokens | forwards | drafter forwards | tokens/forward "
          "| kept/drafted | wall s | speed-up | 8-gram rep | loops |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in a.workloads:
        for width in a.widths:
            for line in report(name, width, measure(model, loads[name], width, a)):
                print(line, flush=True)
    if a.sot:
        sot(a)


if __name__ == "__main__":
    main()
