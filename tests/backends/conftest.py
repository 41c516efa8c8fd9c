"""Backend test fixtures: the anyio backend and the real llama.cpp servers (each skipped with
the reason where it cannot run): `llama_python` (llama-cpp-python's server), `llama_binary`
(llama.cpp's `llama-server`, 4 slots), and `llama`, which runs a test once on each."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from llama_server import KINDS, Kind, LlamaServer, llama_server, skip_reason


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _serve(kind: Kind, factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    reason = skip_reason(kind)
    if reason is not None:
        pytest.skip(reason)
    with llama_server(factory.mktemp(kind) / "server.log", kind) as server:
        yield server


@pytest.fixture(scope="session")
def llama_python(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """llama-cpp-python's OpenAI server (SmolLM2-135M), one for the whole session."""
    yield from _serve("llama-cpp-python", tmp_path_factory)


@pytest.fixture(scope="session")
def llama_binary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """llama.cpp's llama-server (SmolLM2-135M, 4 parallel slots), one for the whole session."""
    yield from _serve("llama-server", tmp_path_factory)


@pytest.fixture(params=KINDS)
def llama(request: pytest.FixtureRequest) -> LlamaServer:
    """Each llama.cpp server in turn (test ids `[llama-cpp-python]`, `[llama-server]`)."""
    name = "llama_binary" if request.param == "llama-server" else "llama_python"
    server: LlamaServer = request.getfixturevalue(name)
    return server
