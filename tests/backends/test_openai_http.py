"""OpenAIBackend against a scripted fault-injecting server (the real llama.cpp servers: in
test_llama_servers.py)."""

from __future__ import annotations

import random
from contextlib import aclosing

import anyio
import pytest
from fault_server import Reply, fault_server

from parafill.backends.base import Backend, BackendError, Message, Request, Sampling, complete
from parafill.backends.openai_http import OpenAIBackend, OpenAIConfig, encode_body

pytestmark = pytest.mark.anyio


def config(*urls: str, **overrides: object) -> OpenAIConfig:
    fast = {"timeout": 5.0, "max_retries": 3, "backoff_base": 0.01, "backoff_cap": 0.05}
    return OpenAIConfig(base_urls=urls, model="test", **{**fast, **overrides})  # type: ignore[arg-type]


def backend(cfg: OpenAIConfig) -> OpenAIBackend:
    return OpenAIBackend(cfg, rng=random.Random(0))


# --- request bodies ---------------------------------------------------------------------------


def test_bodies_are_byte_stable_and_share_prefixes() -> None:
    cfg = OpenAIConfig(base_urls=("http://x",), model="m")
    system = Message("system", "You write outlines.")
    shared = (system, Message("user", "Plan an essay on tides."))
    a = Request((*shared, Message("assistant", "1. Moon")), Sampling(max_tokens=9))
    b = Request((*shared, Message("assistant", "2. Sun")), Sampling(seed=3, stop=("\n",)))
    assert encode_body(cfg, a) == encode_body(cfg, Request(a.messages, Sampling(max_tokens=9)))
    body_a, body_b = encode_body(cfg, a), encode_body(cfg, b)
    prefix = b'{"model":"m","messages":[{"role":"system","content":"You write outlines."},'
    assert body_a.startswith(prefix) and body_b.startswith(prefix)
    common = len(prefix) + len(b'{"role":"user","content":"Plan an essay on tides."},')
    assert body_a[:common] == body_b[:common]


def test_assistant_prefix_is_dropped_or_continued() -> None:
    req = Request((Message("user", "Outline tides."), Message("assistant", "1.")), Sampling())
    dropped = encode_body(OpenAIConfig(("http://x",), "m"), req)
    assert b'"assistant"' not in dropped and b"continue_final_message" not in dropped
    kept = encode_body(OpenAIConfig(("http://x",), "m", assistant_prefix="continue"), req)
    assert b'{"role":"assistant","content":"1."}' in kept
    assert b'"continue_final_message":true,"add_generation_prompt":false' in kept
    cont = OpenAIConfig(("http://x",), "m", assistant_prefix="continue")
    assert b"continue_final_message" not in encode_body(cont, Request.chat("hi"))


@pytest.mark.parametrize(
    ("chunks", "text"),
    [
        ((" 1", ". Moon", "\n2. Sun"), " Moon\n2. Sun"),  # wrote the prefix itself: stripped
        (("Sure:", " 1. Moon"), "Sure: 1. Moon"),  # did not: passed through
        (("1",), "1"),  # ended before the prefix could be decided
    ],
)
async def test_dropped_prefix_is_stripped_when_the_model_writes_it(
    chunks: tuple[str, ...], text: str
) -> None:
    req = Request((Message("user", "Outline tides."), Message("assistant", "1.")), Sampling())
    async with fault_server(default=Reply(chunks=chunks)) as server:
        async with backend(config(server.url)) as b:
            got = [c async for c in b.stream(req)]
    assert "".join(c.text for c in got) == text
    assert sum(c.tokens for c in got) == len(chunks)
    assert got[-1].finish_reason == "stop"


def test_penalties_and_bias_are_sent_only_when_set() -> None:
    cfg = OpenAIConfig(base_urls=("http://x",), model="m")
    s = Sampling(max_tokens=4, frequency_penalty=0.5, presence_penalty=-1.0,
                 logit_bias=((3, 2.5), (10, -100.0)))
    body = encode_body(cfg, Request.chat("hi", sampling=s))
    assert (b'"frequency_penalty":0.5,"presence_penalty":-1.0,'
            b'"logit_bias":{"3":2.5,"10":-100.0}') in body
    plain = encode_body(cfg, Request.chat("hi"))
    assert b"penalty" not in plain and b"logit_bias" not in plain


def test_completions_body_renders_prompt() -> None:
    cfg = OpenAIConfig(("http://x/v1/",), "m", endpoint="completions", prompt=lambda ms: "P")
    assert cfg.url(cfg.base_urls[0]) == "http://x/v1/completions"
    assert encode_body(cfg, Request.chat("hi")).startswith(b'{"model":"m","prompt":"P",')


def test_config_validates() -> None:
    with pytest.raises(ValueError):
        OpenAIConfig(base_urls=(), model="m")
    with pytest.raises(ValueError):
        OpenAIConfig(base_urls="http://x", model="m")  # type: ignore[arg-type]


# --- streaming and token counts ------------------------------------------------------------


async def test_streams_chat_and_counts_chunks() -> None:
    async with fault_server() as server, backend(config(server.url)) as b:
        assert isinstance(b, Backend)
        chunks = [c async for c in b.stream(Request.chat("hi"))]
    assert "".join(c.text for c in chunks) == "Hello world"
    assert sum(c.tokens for c in chunks) == 3
    assert chunks[-1].finish_reason == "stop"
    assert [s.path for s in server.requests] == ["/v1/chat/completions"]
    assert b'"stream":true' in server.requests[0].body


async def test_server_usage_wins_over_chunk_count() -> None:
    async with fault_server([Reply(usage=7, finish="length")]) as server:
        async with backend(config(server.url, endpoint="completions")) as b:
            text, tokens, finish = await complete(b, Request.chat("hi"))
    assert (text, tokens, finish) == ("Hello world", 7, "length")
    assert server.requests[0].path == "/v1/completions"


def _lp(*values: float) -> dict[str, object]:
    return {"content": [{"token": "t", "logprob": v, "bytes": None, "top_logprobs": []}
                        for v in values]}


async def test_logprobs_are_requested_and_carried() -> None:
    """logprobs=True: the body asks for them; each chunk carries its tokens' log p and counts
    one token per entry (a chunk of two tokens counts 2); a prefix strip keeps them."""
    blocks = (_lp(-0.5), _lp(-0.25, -1.0), _lp(-2.0))
    async with fault_server([Reply(logprobs=blocks)]) as server:
        async with backend(config(server.url, logprobs=True)) as b:
            chunks = [c async for c in b.stream(Request.chat("hi"))]
    assert b'"logprobs":true' in server.requests[0].body
    assert [c.token_logprobs for c in chunks[:3]] == [(-0.5,), (-0.25, -1.0), (-2.0,)]
    assert [c.logprob for c in chunks[:3]] == [-0.5, -1.25, -2.0]
    assert sum(c.tokens for c in chunks) == 4
    async with fault_server([Reply(chunks=("1.", " A"), logprobs=(_lp(-0.1), _lp(-0.3)))]) as s2:
        async with backend(config(s2.url, logprobs=True)) as b:
            msgs = (Message("user", "list"), Message("assistant", "1."))
            got = [c async for c in b.stream(Request(msgs))]
    assert "".join(c.text for c in got) == " A"
    assert sum(c.logprob or 0.0 for c in got) == pytest.approx(-0.4)


async def test_missing_or_malformed_logprobs_are_not_an_error() -> None:
    blocks = (None, {"content": "nonsense"}, {"content": [{"logprob": "x"}]})
    async with fault_server([Reply(logprobs=blocks)]) as server:
        async with backend(config(server.url, logprobs=True)) as b:
            chunks = [c async for c in b.stream(Request.chat("hi"))]
    assert "".join(c.text for c in chunks) == "Hello world"
    assert all(c.logprob is None and c.token_logprobs == () for c in chunks)
    async with fault_server() as server, backend(config(server.url)) as b:
        [c async for c in b.stream(Request.chat("hi"))]
    assert b"logprobs" not in server.requests[0].body  # off by default


async def test_not_entered_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="async with"):
        await complete(backend(config("http://127.0.0.1:9")), Request.chat("hi"))


# --- retries -----------------------------------------------------------------------------------


async def test_429_waits_for_retry_after() -> None:
    script = [Reply(429, headers=(("Retry-After", "1"),))]
    async with fault_server(script) as server, backend(config(server.url)) as b:
        text, _, _ = await complete(b, Request.chat("hi"))
    assert text == "Hello world"
    (gap,) = server.gaps()
    assert 0.95 <= gap < 1.6  # Retry-After, not the 0.01 s backoff


async def test_500_retried_with_growing_backoff() -> None:
    script = [Reply(500), Reply(500)]
    async with fault_server(script) as server:
        async with backend(config(server.url, backoff_base=0.2, backoff_cap=5.0)) as b:
            text, _, _ = await complete(b, Request.chat("hi"))
    assert text == "Hello world"
    first, second = server.gaps()
    assert 0.1 <= first < 0.4 and 0.2 <= second < 0.7  # equal jitter: [c/2, c], c = 0.2, 0.4


async def test_exhausted_retries_name_endpoint_and_status() -> None:
    async with fault_server(default=Reply(503)) as server, backend(config(server.url)) as b:
        with pytest.raises(BackendError, match=r"127\.0\.0\.1.*4 attempts.*HTTP 503") as err:
            await complete(b, Request.chat("hi"))
    assert err.value.retryable and len(server.requests) == 4


async def test_client_errors_are_not_retried() -> None:
    async with fault_server(default=Reply(400)) as server, backend(config(server.url)) as b:
        with pytest.raises(BackendError, match="HTTP 400") as err:
            await complete(b, Request.chat("hi"))
    assert not err.value.retryable and len(server.requests) == 1


async def test_slow_server_times_out_clearly() -> None:
    async with fault_server(default=Reply(delay=3.0)) as server:
        async with backend(config(server.url, timeout=0.3, max_retries=1)) as b:
            start = anyio.current_time()
            with pytest.raises(BackendError, match=r"127\.0\.0\.1.*timed out.*0\.3s"):
                await complete(b, Request.chat("hi"))
            elapsed = anyio.current_time() - start
    assert len(server.requests) == 2 and 0.6 <= elapsed < 2.0


async def test_drop_before_first_chunk_is_retried() -> None:
    async with fault_server([Reply(drop_after=0)]) as server, backend(config(server.url)) as b:
        text, _, _ = await complete(b, Request.chat("hi"))
    assert text == "Hello world" and len(server.requests) == 2


async def test_drop_mid_stream_is_not_retried() -> None:
    got: list[str] = []
    async with fault_server(default=Reply(drop_after=1)) as server:
        async with backend(config(server.url)) as b:
            with pytest.raises(BackendError, match="stream broke after 1 chunks") as err:
                async for chunk in b.stream(Request.chat("hi")):
                    got.append(chunk.text)  # noqa: PERF401 -- keep what came before the error
    assert got == ["Hel"] and err.value.retryable and len(server.requests) == 1


async def test_stall_mid_stream_times_out_without_retry() -> None:
    stall = Reply(chunks=("a", "b"), chunk_delay=2.0)
    async with fault_server(default=stall) as server:
        async with backend(config(server.url, timeout=0.3)) as b:
            with pytest.raises(BackendError, match="after 1 chunks: timed out") as err:
                await complete(b, Request.chat("hi"))
    assert err.value.retryable and len(server.requests) == 1


async def test_stream_without_finish_reason_is_an_error() -> None:
    cut = Reply(chunks=("a",), finish=None)  # [DONE] but no finish_reason
    async with fault_server(default=cut) as server, backend(config(server.url)) as b:
        with pytest.raises(BackendError, match=r"after 1 chunks: bad stream: \[DONE\]"):
            await complete(b, Request.chat("hi"))


async def test_unreachable_endpoint_is_avoided() -> None:
    async with fault_server() as server:
        dead = "http://127.0.0.1:9"  # discard port: nothing listens
        async with backend(config(dead, server.url, max_retries=1)) as b:
            for _ in range(3):
                assert (await complete(b, Request.chat("hi")))[0] == "Hello world"
        async with backend(config(dead, max_retries=1)) as b:
            with pytest.raises(BackendError, match="ConnectError"):
                await complete(b, Request.chat("hi"))


# --- balancing, caps, cancellation -------------------------------------------------------------


async def test_balances_across_endpoints_under_caps() -> None:
    slow = Reply(chunk_delay=0.05)
    async with fault_server(default=slow) as s1, fault_server(default=slow) as s2:
        async with backend(config(s1.url, s2.url, max_concurrency=2)) as b:
            assert b.capabilities.max_concurrency == 4

            async def one() -> None:
                assert (await complete(b, Request.chat("hi")))[0] == "Hello world"

            async with anyio.create_task_group() as tg:
                for _ in range(10):
                    tg.start_soon(one)
            assert b.in_flight == 0
    assert len(s1.requests) + len(s2.requests) == 10
    assert len(s1.requests) >= 4 and len(s2.requests) >= 4
    assert s1.max_active == 2 and s2.max_active == 2


async def test_sequential_requests_alternate() -> None:
    async with fault_server() as s1, fault_server() as s2:
        async with backend(config(s1.url, s2.url)) as b:
            for _ in range(4):
                await complete(b, Request.chat("hi"))
    assert len(s1.requests) == len(s2.requests) == 2


async def test_cancelling_the_consumer_closes_the_stream() -> None:
    endless = Reply(chunks=("tok",) * 400, chunk_delay=0.02)
    async with fault_server(default=endless) as server, backend(config(server.url)) as b:
        got = 0
        with anyio.CancelScope() as scope:
            async for _ in b.stream(Request.chat("hi")):
                got += 1
                if got == 3:
                    scope.cancel()
        assert got == 3 and b.in_flight == 0
        with anyio.fail_after(3):
            await server.hung_up.wait()


async def test_closing_a_stream_early_closes_the_response() -> None:
    endless = Reply(chunks=("tok",) * 400, chunk_delay=0.02)
    async with fault_server(default=endless) as server, backend(config(server.url)) as b:
        async with aclosing(b.stream(Request.chat("hi"))) as chunks:
            async for _ in chunks:
                break
        assert b.in_flight == 0
        with anyio.fail_after(3):
            await server.hung_up.wait()
