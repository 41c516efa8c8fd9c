"""One real `parafill serve` app (embedded SmolLM2, fp32 CPU) on 127.0.0.1 for the session.

uvicorn runs in a background thread inside the same event loop as the LocalBackend; a blocking
portal into that loop lets tests ask the backend directly (reference texts, engine state).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import pytest
import torch
import uvicorn
from anyio.from_thread import BlockingPortal

from parafill.backends.engine.weights import ModelNotFound, default_gguf
from parafill.backends.local import LocalBackend, LocalConfig
from parafill.planners.skeleton import SkeletonPlanner
from parafill.server import ServerSettings, create_app

KEY = "sk-test-parafill"
MODEL = "SmolLM2-135M-Instruct"
SETTINGS = ServerSettings(
    model_name=MODEL,
    max_tokens=400,
    default_max_tokens=8,
    api_key=KEY,
    sot=SkeletonPlanner(max_points=4, skeleton_tokens=48),
)


@dataclass(frozen=True)
class Served:
    url: str  # ends in /v1
    backend: LocalBackend
    portal: BlockingPortal

    def idle(self) -> bool:
        eng = self.backend.engine
        return not (eng.live or eng.waiting)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _run(port: int, box: dict[str, Any], ready: threading.Event) -> None:
    async def main() -> None:
        cfg = LocalConfig(budget_tokens=4096, rows=8)  # a row holds 512 tokens
        async with LocalBackend.open(cfg) as backend, BlockingPortal() as portal:
            config = uvicorn.Config(
                create_app(backend, SETTINGS), host="127.0.0.1", port=port, log_level="warning"
            )
            box.update(backend=backend, portal=portal, server=uvicorn.Server(config))
            ready.set()
            await box["server"].serve()

    try:
        anyio.run(main)
    except BaseException as exc:  # surfaced to the fixture, which fails the tests
        box["error"] = exc
        ready.set()


def _answers(url: str) -> bool:
    try:
        httpx.get(f"{url}/models", timeout=2)
    except httpx.TransportError:
        return False
    return True


def _wait_up(url: str, box: dict[str, Any], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and "error" not in box:
        if _answers(url):
            return
        time.sleep(0.1)
    raise RuntimeError(f"server did not start: {box.get('error')!r}")


@pytest.fixture(scope="session")
def served() -> Iterator[Served]:
    try:
        default_gguf()
    except ModelNotFound as exc:
        pytest.skip(str(exc))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 135M model on a busy 2-core box: one thread beats two
    port, box, ready = free_port(), {}, threading.Event()
    thread = threading.Thread(target=_run, args=(port, box, ready), daemon=True)
    thread.start()
    ready.wait(120)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_up(url, box)
        yield Served(url, box["backend"], box["portal"])
    finally:
        if "server" in box:
            box["server"].should_exit = True
        thread.join(30)
        torch.set_num_threads(threads)
