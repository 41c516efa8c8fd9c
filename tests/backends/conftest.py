"""Backend test fixtures: the anyio backend and a real llama.cpp server (skipped without one)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from llama_server import LlamaServer, llama_server, skip_reason


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """One llama.cpp server (SmolLM2-135M) for the whole session."""
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    with llama_server(tmp_path_factory.mktemp("llama") / "server.log") as server:
        yield server
