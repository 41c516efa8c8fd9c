"""The engine's retained prefix cache on and off, same model, same machine, one run.

    python benchmarks/prefix_cache.py [--chats 4 --turns 4 --tweets 20]

Workloads on the embedded SmolLM2-135M-Instruct (greedy, LocalBackend, rows mode):
- chat: conversations in parallel, each about its own document (a ~400-word section of this
  project's README) pasted into the first message; each turn's prompt is the whole history
  (what an OpenAI-style client sends): with the cache, a turn prefills only its new message;
- ner: PaDeLLM-NER on held-out WNUT-16 tweets, one tweet at a time: the mention stage's
  prompts extend the finished count stage's prompts.
Per workload and setting: wall seconds, prompt tokens not prefilled (taken from a live
sibling's shared prefix, or, with the cache on, from a finished request), forward passes;
the answers of both settings are compared (they must be identical: the cache is lossless).
Runs alternate off/on `--reps` times; the fastest of each is reported.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import anyio
import torch

from parafill.backends.base import Message, Request, Sampling, complete
from parafill.backends.local import LocalBackend, LocalConfig
from parafill.planners.ner import ADAPTER, NerConfig, extract
from parafill.planners.ner_data import read_conll, split

FOLLOW_UPS = ["What is the most important point?", "Explain it more simply.", "Any caveats?"]


def documents(n: int, words: int = 400) -> list[str]:
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text().split()
    return [" ".join(text[i * words : (i + 1) * words]) for i in range(n)]


async def chat(backend: LocalBackend, chats: int, turns: int, tokens: int) -> list[str]:
    answers: dict[tuple[int, int], str] = {}
    docs = documents(chats)

    async def conversation(c: int) -> None:
        history: list[Message] = []
        for t in range(turns):
            first = f"Here is a document:\n\n{docs[c]}\n\nSummarize it in two sentences."
            text = first if t == 0 else FOLLOW_UPS[(t - 1) % len(FOLLOW_UPS)]
            history.append(Message("user", text))
            req = Request(tuple(history), Sampling(max_tokens=tokens))
            reply, _, _ = await complete(backend, req)
            answers[c, t] = reply
            history.append(Message("assistant", reply))

    async with anyio.create_task_group() as tg:
        for c in range(chats):
            tg.start_soon(conversation, c)
    return [answers[k] for k in sorted(answers)]


async def ner(backend: LocalBackend, tweets: list[str]) -> list[str]:
    out = []
    for text in tweets:
        result = await extract(text, backend, NerConfig(), "parallel")
        out.append(repr(sorted((e.label, e.text) for e in result.entities)))
    return out


async def measure(args: argparse.Namespace, retain: bool, tweets: list[str]) -> dict[str, tuple]:
    results: dict[str, tuple] = {}
    for name in ("chat", "ner"):
        adapter = str(ADAPTER) if name == "ner" else None
        async with LocalBackend.open(LocalConfig(retain=retain, adapter=adapter)) as backend:
            eng = backend.engine
            await complete(backend, Request((Message("user", "hi"),), Sampling(max_tokens=4)))
            reused0, passes0 = eng.reused, backend.forward_passes
            t0 = time.perf_counter()
            if name == "chat":
                answers = await chat(backend, args.chats, args.turns, args.tokens)
            else:
                answers = await ner(backend, tweets)
            wall = time.perf_counter() - t0
            results[name] = (wall, eng.reused - reused0, backend.forward_passes - passes0, answers)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chats", type=int, default=4)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=48, help="max tokens per chat reply")
    ap.add_argument("--tweets", type=int, default=20)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--data", default="../shared/data/wnut16_dev.conll")
    ap.add_argument("--hardware-note", default="")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/prefix_cache_cpu.md"))
    a = ap.parse_args()
    _, held_out = split(read_conll(a.data))
    tweets = [t.text for t in held_out[: a.tweets]]
    best: dict[tuple[str, bool], tuple] = {}
    answers: dict[tuple[str, bool], list[list[str]]] = {}  # every rep's answers
    for _ in range(a.reps):
        for retain in (False, True):
            for name, r in anyio.run(measure, a, retain, tweets).items():
                answers.setdefault((name, retain), []).append(r[3])
                if (name, retain) not in best or r[0] < best[name, retain][0]:
                    best[name, retain] = r
    hw = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"{platform.machine()}, {torch.get_num_threads()} torch threads"
    )
    lines = [
        "# Retained prefix cache: off vs on",
        "",
        f"- hardware: {hw}, torch {torch.__version__} {a.hardware_note}".rstrip(),
        f"- chat: {a.chats} conversations in parallel, each on its own ~400-word document, x "
        f"{a.turns} turns, replies <= {a.tokens} tokens; ner: PaDeLLM parallel, {a.tweets} held-out WNUT-16 tweets one at a time",
        f"- fastest of {a.reps} alternating runs per setting",
        "",
        "| workload | cache | wall s | prompt tokens reused | forward passes |",
        "|---|---|---|---|---|",
    ]
    agree = []
    for name in ("chat", "ner"):
        off, on = best[name, False], best[name, True]
        for retain, r in ((False, off), (True, on)):
            lines.append(f"| {name} | {'on' if retain else 'off'} | {r[0]:.1f} | {r[1]} | {r[2]} |")
        lines.append(f"| {name} | speed-up | {off[0] / on[0]:.2f}x | | |")
        runs = {k: v for k, v in answers.items() if k[0] == name}
        n = len(off[3])
        pairs = {
            "off vs on": (runs[name, False][0], runs[name, True][0]),
            "off vs off": (runs[name, False][0], runs[name, False][-1]),
            "on vs on": (runs[name, True][0], runs[name, True][-1]),
        }
        agree.append(
            f"- {name}: identical answers, "
            + "; ".join(f"{k} {sum(x == y for x, y in zip(*p, strict=True))}/{n}"
                        for k, p in pairs.items())
        )
    lines += [
        "",
        "Answers compared (greedy): the cache is lossless by construction and token-exact in",
        "the fp32 engine tests; on the real model, concurrent requests share steps in an order",
        "that depends on timing, and different batch / prefill shapes round fp32 differently,",
        "which can flip a near-tied greedy token (compare 'off vs off' across repetitions).",
        *agree,
    ]
    text = "\n".join(lines) + "\n"
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
