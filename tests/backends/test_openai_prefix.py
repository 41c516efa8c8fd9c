"""How OpenAIBackend sends a node's answer prefix (a trailing assistant message): "auto" asks
each server once what it is (GET /v1/models, `owned_by`) and continues the message only where
every server is known to; the explicit config wins. Scripted servers here; the real llama.cpp
servers in test_llama_servers.py."""

from __future__ import annotations

import json
import random

import pytest
from fault_server import FaultServer, Reply, fault_server

from parafill.backends.base import Message, Request, complete
from parafill.backends.openai_http import OpenAIBackend, OpenAIConfig
from parafill.backends.openai_probe import ServerInfo, continuation, models_url

pytestmark = pytest.mark.anyio

PREFIXED = Request((Message("user", "Outline tides."), Message("assistant", "1.")))


def backend(*urls: str, **overrides: object) -> OpenAIBackend:
    fast = {"timeout": 5.0, "max_retries": 0, "backoff_base": 0.01, "backoff_cap": 0.05}
    return OpenAIBackend(OpenAIConfig(urls, "test", **{**fast, **overrides}), rng=random.Random(0))  # type: ignore[arg-type]


def sent_messages(server: FaultServer, i: int = 0) -> list[dict[str, str]]:
    return json.loads(server.requests[i].body)["messages"]  # type: ignore[no-any-return]


async def test_llama_server_is_asked_once_and_continued() -> None:
    async with fault_server(default=Reply(chunks=(" Moon", "\n2. Sun"))) as server:
        server.owned_by = "llamacpp"
        async with backend(server.url) as b:
            texts = [(await complete(b, PREFIXED))[0] for _ in range(3)]
            assert await b.prefix_mode() == "continue"
    assert server.probes == 1 and len(server.requests) == 3
    assert sent_messages(server)[-1] == {"role": "assistant", "content": "1."}
    assert b'"continue_final_message":true' in server.requests[0].body
    assert texts == [" Moon\n2. Sun"] * 3


@pytest.mark.parametrize("owner", ["me", "fault-server"])  # "me": llama-cpp-python's server
async def test_other_servers_get_the_prefix_dropped(owner: str) -> None:
    async with fault_server(default=Reply(chunks=("1.", " Moon"))) as server:
        server.owned_by = owner
        async with backend(server.url) as b:
            text, _, _ = await complete(b, PREFIXED)
    assert server.probes == 1 and sent_messages(server)[-1]["role"] == "user"
    assert b"continue_final_message" not in server.requests[0].body
    assert text == " Moon"  # the prefix the model wrote itself is stripped


async def test_explicit_mode_wins_without_asking() -> None:
    async with fault_server() as server:
        server.owned_by = "llamacpp"
        async with backend(server.url, assistant_prefix="drop") as b:
            await complete(b, PREFIXED)
        async with backend(server.url, assistant_prefix="continue") as b:
            await complete(b, PREFIXED)
    assert server.probes == 0
    assert [sent_messages(server, i)[-1]["role"] for i in (0, 1)] == ["user", "assistant"]


async def test_requests_without_a_prefix_never_ask() -> None:
    async with fault_server() as server, backend(server.url) as b:
        await complete(b, Request.chat("hi"))
    assert server.probes == 0


async def test_a_failed_probe_drops_and_asks_again() -> None:
    async with fault_server() as server:
        server.owned_by, server.models_status = "llamacpp", 500
        async with backend(server.url) as b:
            await complete(b, PREFIXED)
            server.models_status = 200
            await complete(b, PREFIXED)
    assert server.probes == 2
    assert [sent_messages(server, i)[-1]["role"] for i in (0, 1)] == ["user", "assistant"]


async def test_mixed_servers_drop() -> None:
    async with fault_server() as s1, fault_server() as s2:
        s1.owned_by, s2.owned_by = "llamacpp", "me"
        async with backend(s1.url, s2.url) as b:
            assert await b.prefix_mode() == "drop"
    assert s1.probes == s2.probes == 1


def test_continuation_table() -> None:
    assert continuation([ServerInfo("llamacpp", ("m",)), ServerInfo("vllm", ())]) == "continue"
    assert continuation([ServerInfo("llamacpp", ("m",)), ServerInfo(None, ())]) == "drop"
    assert continuation([ServerInfo("llamacpp", ("m",)), None]) is None
    assert models_url("http://h:1/v1/") == models_url("http://h:1") == "http://h:1/v1/models"


def test_prefix_mode_is_validated() -> None:
    with pytest.raises(ValueError, match="assistant_prefix"):
        OpenAIConfig(("http://x",), "m", assistant_prefix="keep")  # type: ignore[arg-type]
