"""parafill serve vs llama.cpp's llama-server on this CPU, side by side, same GGUF, same requests.

    python benchmarks/cpu_peer.py [--weights fp32 int4 int4:native] [--levels 1 4 8] [--rounds 3]
    # -> benchmarks/results/cpu_peer_cpu.md

A format may name the attention precision after a colon (`int4:native`: fp32 attention, not
token-exact across packing modes; plain `int4` is `auto`: fp64 attention).

Starts llama-server (built by scripts/build_llama_server.sh; `-np` = --slots, `-t` = --threads)
and one `parafill serve` per weight format, all on 127.0.0.1 with the embedded
SmolLM2-135M-Instruct Q4_1 GGUF, and opens the engine in this process in each format too (the
same requests through LocalBackend, no HTTP). Each round runs every level against every server in turn (the
others idle): N concurrent streaming chat completions, greedy, --max-tokens each, prompts cycled
from serve_load.py's eight; tokens/s = completion tokens of all N (usage) / wall time. Medians of
--rounds. Only one server computes at a time.

`--ngram`: also both with n-gram speculation (lossless at temperature 0): `parafill serve
--filler ngram` (the first --weights format) beside llama-server `--spec-type ngram-simple`, with
its defaults (12-token lookup, 48-token drafts) and with a short lookup (3 tokens, 8-token drafts);
tokens/s counts emitted tokens, whatever the number of forward passes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

import anyio
from hardware import describe
from openai import AsyncOpenAI
from serve_load import PROMPTS, free_port

from parafill.backends.base import Request, Sampling, complete
from parafill.backends.engine.weights import default_gguf
from parafill.backends.local import LocalBackend, LocalConfig
from parafill.cli.serve import served_name

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "backends"))
from llama_server import _wait_ready  # noqa: E402  (the tests' readiness probe)


def llama_binary() -> str:
    if env := os.environ.get("PARAFILL_LLAMA_SERVER"):
        return env
    out = subprocess.run(
        ["bash", str(ROOT / "scripts/build_llama_server.sh")], capture_output=True, text=True
    )
    if out.returncode:
        raise RuntimeError(f"building llama-server failed:\n{out.stderr[-2000:]}")
    return out.stdout.strip().splitlines()[-1]


def start(cmd: list[str], port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)
    _wait_ready(f"http://127.0.0.1:{port}", proc, log, 300)
    return proc


def servers(args: argparse.Namespace) -> dict[str, tuple[int, list[str]]]:
    slots, rows, ctx = args.slots, max(args.levels), 512
    gguf = args.gguf or str(default_gguf())
    out: dict[str, tuple[int, list[str]]] = {}
    port = free_port()
    out["llama-server"] = (port, [
        llama_binary(), "--model", gguf, "--host", "127.0.0.1", "--port", str(port),
        "--threads", str(args.threads), "--parallel", str(slots),
        "--ctx-size", str(ctx * slots)])  # fmt: skip
    if args.ngram:
        base = out["llama-server"][1]
        simple = ["--spec-type", "ngram-simple"]
        short = [*simple, "--spec-ngram-simple-size-n", "3", "--spec-ngram-simple-size-m", "8"]
        for name, extra in (("ngram-simple", simple), ("ngram-simple n3 m8", short)):
            port = free_port()
            cmd = [*base, *extra]
            cmd[cmd.index("--port") + 1] = str(port)
            out[f"llama-server {name}"] = (port, cmd)
    exe = str(Path(sys.executable).parent / "parafill")
    for w in args.weights:
        port = free_port()
        fmt, attention = spec(w)
        out[f"parafill serve --weights {w}"] = (port, [
            exe, "serve", "--port", str(port), "--weights", fmt, "--attention", attention,
            *(["--model", args.gguf] if args.gguf else []),
            "--rows", str(rows),
            "--budget-tokens", str(ctx * rows), "--max-tokens", str(args.max_tokens)])  # fmt: skip
    if args.ngram:
        port = free_port()
        name, cmd = next((k, c) for k, (_, c) in out.items() if k.startswith("parafill"))
        cmd = [*cmd, "--filler", "ngram"]
        cmd[cmd.index("--port") + 1] = str(port)
        out[f"{name} --filler ngram"] = (port, cmd)
    return out


def spec(w: str) -> tuple[str, str]:
    """'int4' -> ('int4', 'auto'); 'int4:native' -> ('int4', 'native')."""
    fmt, _, attention = w.partition(":")
    return fmt, attention or "auto"


async def local_level(backend: LocalBackend, n: int, max_tokens: int) -> float:
    """Tokens/s of n concurrent greedy requests to the engine in this process (no HTTP)."""
    tokens = [0] * n

    async def one(i: int) -> None:
        req = Request.chat(PROMPTS[i % len(PROMPTS)])
        req = Request(req.messages, Sampling(max_tokens=max_tokens, temperature=0.0))
        tokens[i] = (await complete(backend, req))[1]

    t0 = anyio.current_time()
    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(one, i)
    return sum(tokens) / (anyio.current_time() - t0)


async def level(port: int, n: int, max_tokens: int, model: str) -> float:
    """Tokens/s of n concurrent greedy streaming chat completions."""
    tokens = [0] * n
    async with AsyncOpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600
    ) as client:

        async def one(i: int) -> None:
            stream = await client.chat.completions.create(
                model=model,  # parafill checks it; llama-server does not
                messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                max_tokens=max_tokens,
                temperature=0.0,
                stream=True,
                stream_options={"include_usage": True},
            )
            async for chunk in stream:
                if chunk.usage is not None:
                    tokens[i] = chunk.usage.completion_tokens

        t0 = anyio.current_time()
        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(one, i)
        return sum(tokens) / (anyio.current_time() - t0)


async def measure(args: argparse.Namespace) -> str:
    specs = servers(args)
    procs = {
        name: start(cmd, port, Path(f"/tmp/cpu_peer_{i}.log"))
        for i, (name, (port, cmd)) in enumerate(specs.items())
    }
    rates: dict[tuple[str, int], list[float]] = {}
    ops: dict[str, int] = {}
    try:
        for port, _ in specs.values():  # warm every server once
            await level(port, 1, 16, args.name)
        for _ in range(args.rounds):
            for n in args.levels:
                for name, (port, _) in specs.items():
                    rates.setdefault((name, n), []).append(
                        await level(port, n, args.max_tokens, args.name)
                    )
    finally:
        for p in procs.values():
            p.terminate()
            p.wait(timeout=30)
    # then the engine in this process, one format at a time (with two engines open in one
    # process, the computing one ran at 0.6x its speed alone on this CPU)
    rows = max(args.levels)
    for w in [] if args.no_local else args.weights:
        name = f"engine in-process --weights {w}"
        fmt, attention = spec(w)
        config = LocalConfig(
            weights=fmt,
            attention=attention,
            rows=rows,
            budget_tokens=512 * rows,  # type: ignore[arg-type]
            model=args.gguf,
        )
        async with LocalBackend.open(config) as backend:
            await local_level(backend, 1, 16)
            for _ in range(args.rounds):
                for n in args.levels:
                    got = await local_level(backend, n, args.max_tokens)
                    rates.setdefault((name, n), []).append(got)
        if not args.gguf:
            ops[w] = await anyio.to_thread.run_sync(ops_per_step, fmt, attention)
    med = {k: statistics.median(v) for k, v in rates.items()}
    lines = [
        "# parafill serve vs llama.cpp's llama-server (CPU, same GGUF, same requests)", "",
        f"- model: {args.gguf or 'the embedded SmolLM2-135M-Instruct Q4_1 GGUF'}",
        f"- hardware: {describe()}; "
        f"llama-server from llama-cpp-python 0.3.36's vendored llama.cpp, `-t {args.threads} "
        f"-np {args.slots}`; `parafill serve` and the in-process engine with {rows} rows; "
        f"greedy, max_tokens {args.max_tokens}, streaming chat over HTTP (in-process: the same "
        f"requests through LocalBackend, after the servers, one format at a time); median of "
        f"{args.rounds} interleaved rounds; "
        f"`python benchmarks/cpu_peer.py`", "",
        "| server | " + " | ".join(f"{n} clients tok/s" for n in args.levels) + " |",
        "|---|" + "---|" * len(args.levels),
    ]  # fmt: skip
    base = "llama-server"
    for name in dict.fromkeys(k for k, _ in rates):  # servers, then the in-process engines
        cells = [f"{med[name, n]:.0f} ({med[name, n] / med[base, n]:.2f}x)" for n in args.levels]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if ops:
        counts = ", ".join(f"{w} {n}" for w, n in ops.items())
        lines += ["", f"Ops dispatched per width-1 decode step (torch profiler): {counts}."]
    return "\n".join(lines) + "\n"


def ops_per_step(fmt: str, attention: str) -> int:
    """torch ops (aten::*, the profiler's count) of one width-1 decode step of an engine over
    the embedded model in `fmt` (a fresh engine: the served ones run in their own threads)."""
    from torch.profiler import ProfilerActivity, profile

    from parafill.backends.engine.engine import Engine, EngineConfig
    from parafill.backends.engine.gguf_q4 import q4_blocks
    from parafill.backends.engine.model import CompactLM
    from parafill.backends.engine.quant import quantize
    from parafill.backends.engine.sampling import GenParams
    from parafill.backends.engine.weights import load

    hf, _ = load(None)
    lm = CompactLM(hf, 1024)
    quantize(lm, fmt, q4_blocks(default_gguf(), lm) if fmt in ("int4", "int8") else None)
    engine = Engine(lm, EngineConfig(rows=1, budget_tokens=1024, attention=attention))  # type: ignore[arg-type]
    engine.submit(list(range(1, 33)), GenParams(max_tokens=8))
    for _ in range(3):  # the prompt, then decode steps
        engine.step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        engine.step()
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", nargs="+", default=["fp32", "int8", "int4"])
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 4, 8, 32])
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ngram", action="store_true", help="also both with n-gram speculation")
    ap.add_argument("--no-local", action="store_true", help="skip the in-process engines")
    ap.add_argument("--gguf", help="another GGUF than the embedded SmolLM2 (both sides)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/cpu_peer_cpu.md"))
    args = ap.parse_args()
    args.name = served_name(args.gguf)
    report = anyio.run(measure, args)
    print(report)
    Path(args.out).write_text(report)


if __name__ == "__main__":
    main()
