"""OpenAIBackend holds a node to its max_tokens even against a server that ignores it: the
stream is closed once the tokens that arrived (the server's usage, its per-token log-probs,
else one per text chunk) reach the budget, and the node ends with "length", keeping its text."""

from __future__ import annotations

import random

import anyio
import pytest
from fault_server import Reply, fault_server

from parafill.backends.base import Request, Sampling, complete
from parafill.backends.openai_http import OpenAIBackend, OpenAIConfig
from parafill.backends.openai_sse import ChunkParser

pytestmark = pytest.mark.anyio

GUARD = 20.0  # seconds: a guard against reading until the deadline, not a measurement


def _backend(url: str, **overrides: object) -> OpenAIBackend:
    fast = {"timeout": 5.0, "max_retries": 0, "deadline": 60.0}
    cfg = OpenAIConfig(base_urls=(url,), model="test", **{**fast, **overrides})  # type: ignore[arg-type]
    return OpenAIBackend(cfg, rng=random.Random(0))


def _ask(max_tokens: int) -> Request:
    return Request.chat("hi", sampling=Sampling(max_tokens=max_tokens))


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
async def test_a_server_that_ignores_max_tokens_is_cut_at_the_budget(endpoint: str) -> None:
    endless = Reply(forever=True, chunks=("tok ",))
    with anyio.fail_after(GUARD):
        async with (
            fault_server(default=endless) as server,
            _backend(server.url, endpoint=endpoint) as b,
        ):
            text, tokens, finish = await complete(b, _ask(16))
            await server.hung_up.wait()  # the connection was closed, not left streaming
    assert (text, tokens, finish) == ("tok " * 16, 16, "length")
    assert len(server.requests) == 1


async def test_per_token_logprobs_count_against_the_budget() -> None:
    # each chunk carries two tokens (their log-probs say so): 10 tokens are 5 chunks
    two = {"content": [{"token": "a", "logprob": -0.5}, {"token": "b", "logprob": -0.5}]}
    endless = Reply(forever=True, chunks=("ab",), logprobs=(two,))
    with anyio.fail_after(GUARD):
        async with fault_server(default=endless) as server, _backend(server.url) as b:
            text, tokens, finish = await complete(b, _ask(10))
    assert (text, tokens, finish) == ("ab" * 5, 10, "length")


async def test_a_server_that_keeps_its_budget_is_read_to_the_end() -> None:
    # exactly max_tokens chunks, then the server's own finish and usage: nothing is cut short
    reply = Reply(chunks=("a", "b", "c"), finish="length", usage=3)
    async with fault_server([reply]) as server, _backend(server.url) as b:
        assert await complete(b, _ask(3)) == ("abc", 3, "length")
    reply = Reply(chunks=("a", "b"), finish="stop", usage=2)
    async with fault_server([reply]) as server, _backend(server.url) as b:
        assert await complete(b, _ask(3)) == ("ab", 2, "stop")


def test_the_parser_counts_usage_as_it_arrives() -> None:
    # vLLM's continuous usage stats: usage on every chunk says more tokens than the chunks do
    parser = ChunkParser("chat", budget=8)
    event = '{"choices":[{"index":0,"delta":{"content":"x"}}],"usage":{"completion_tokens":%d}}'
    parser.parse(event % 3)
    assert not parser.full
    parser.parse(event % 8)
    assert parser.full
    final = parser.final()
    assert (final.finish_reason, final.tokens) == ("length", 6)  # 8 in all, 2 of them chunks
    assert not ChunkParser("chat").full  # no budget: never full
