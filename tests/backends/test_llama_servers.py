"""OpenAIBackend against the real llama.cpp servers, each test once per server (fixture
`llama`): llama-cpp-python's Python server and llama.cpp's own `llama-server` (4 slots), both
on 127.0.0.1 with the embedded SmolLM2 GGUF; each is skipped with the reason where it cannot
run (llama-server: scripts/build_llama_server.sh). Also: which answer-prefix mode each one gets
and that it does what the mode promises."""

from __future__ import annotations

import anyio
import pytest
from llama_server import LlamaServer

from parafill.backends.base import Message, Request, Sampling, complete
from parafill.backends.openai_http import OpenAIBackend, OpenAIConfig

pytestmark = pytest.mark.anyio

# what each server writes to its log (lower-cased) when a client hangs up mid-stream
HUNG_UP = {"llama-cpp-python": "disconnected", "llama-server": "cancel task"}


def llama_backend(server: LlamaServer, **overrides: object) -> OpenAIBackend:
    return OpenAIBackend(OpenAIConfig((server.url,), server.model, **overrides))  # type: ignore[arg-type]


GREEDY = Sampling(max_tokens=48, temperature=0.0, seed=1)


async def test_llama_streams_text_and_tokens(llama: LlamaServer) -> None:
    async with llama_backend(llama, timeout=120.0) as b:
        chunks = [c async for c in b.stream(Request.chat("Name three colours.", sampling=GREEDY))]
    text = "".join(c.text for c in chunks)
    tokens = sum(c.tokens for c in chunks)
    assert text.strip() and len(chunks) > 3  # streamed, not one blob
    assert 0 < tokens <= GREEDY.max_tokens
    assert chunks[-1].finish_reason in ("stop", "length")


async def test_llama_completions_endpoint(llama: LlamaServer) -> None:
    async with llama_backend(llama, endpoint="completions", timeout=120.0) as b:
        request = Request.chat("The capital of France is", sampling=Sampling(max_tokens=8))
        text, tokens, finish = await complete(b, request)
    assert text and 0 < tokens <= 8 and finish in ("stop", "length")


async def test_llama_greedy_is_deterministic(llama: LlamaServer) -> None:
    request = Request.chat("Write one sentence about the sea.", sampling=GREEDY)
    other = Request.chat("Name three colours.", sampling=GREEDY)
    runs = []
    async with llama_backend(llama, timeout=120.0) as b:
        for _ in range(2):
            # llama.cpp reuses the KV of the previous request's common prefix, and a prefix
            # evaluated in one batch rounds differently from one evaluated token by token, so
            # greedy text depends on the prior request: give both runs the same one.
            await complete(b, other)
            runs.append(await complete(b, request))
    assert runs[0] == runs[1] and runs[0][0].strip()


async def test_llama_concurrent_requests_complete(llama: LlamaServer) -> None:
    results: dict[int, tuple[str, int, object]] = {}
    async with llama_backend(llama, max_concurrency=4, timeout=120.0) as b:

        async def one(i: int) -> None:
            prompt = f"Count from 1 to {i + 3}."
            results[i] = await complete(b, Request.chat(prompt, sampling=GREEDY))

        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(one, i)
    assert sorted(results) == [0, 1, 2, 3]
    assert all(text and tokens > 0 and finish for text, tokens, finish in results.values())


async def test_llama_cancel_closes_the_stream(llama: LlamaServer) -> None:
    request = Request.chat("Tell a long story about a lighthouse.", sampling=Sampling(512))
    async with llama_backend(llama, timeout=120.0) as b:
        with anyio.CancelScope() as scope:
            async for chunk in b.stream(request):
                if chunk.text:
                    scope.cancel()
        assert scope.cancelled_caught and b.in_flight == 0
        with anyio.fail_after(30):  # the server stops generating once it sees the hang-up
            while HUNG_UP[llama.kind] not in llama.log.read_text(errors="replace").lower():  # noqa: ASYNC110
                await anyio.sleep(0.1)
            text, _, _ = await complete(b, Request.chat("Say hi.", sampling=Sampling(8)))
    assert text


async def test_llama_streams_logprobs(llama: LlamaServer) -> None:
    """llama.cpp's own per-token log p come through: one entry per generated token, each
    <= 0, equal to the server's non-streamed answer's (both asked after the same prior
    request: llama.cpp reuses the previous prompt's KV, which changes rounding)."""
    import httpx

    question = "Name three colours."
    req = Request.chat(question, sampling=Sampling(max_tokens=12, temperature=0.0))
    other = Request.chat("Write one sentence about the sea.", sampling=Sampling(max_tokens=4))
    async with llama_backend(llama, timeout=120.0, logprobs=True) as b:
        await complete(b, other)
        chunks = [c async for c in b.stream(req)]
        await complete(b, other)
    per_token = [x for c in chunks for x in c.token_logprobs]
    assert len(per_token) == sum(c.tokens for c in chunks) == 12
    assert all(x <= 0 for x in per_token) and len(set(per_token)) > 3
    assert all(c.logprob is not None for c in chunks if c.text)
    body = {"model": llama.model, "messages": [{"role": "user", "content": question}],
            "max_tokens": 12, "temperature": 0.0, "logprobs": True, "top_logprobs": 1}
    async with httpx.AsyncClient(timeout=120) as http:
        whole = (await http.post(f"{llama.url}/v1/chat/completions", json=body)).json()
    content = whole["choices"][0]["logprobs"]["content"]
    assert "".join(e["token"] for e in content) == "".join(c.text for c in chunks)
    assert [e["logprob"] for e in content] == pytest.approx(per_token, abs=1e-4)


# --- the answer prefix (a trailing assistant message) ---------------------------------------

FRUITS = Message("user", "List three fruits, one per line.")


async def test_auto_mode_continues_only_on_llama_server(llama: LlamaServer) -> None:
    """llama-server is asked once and continues a prefilled "1."; the Python server gets the
    prefix dropped (it would start a new turn). Either way the answer reads on after "1."."""
    request = Request((FRUITS, Message("assistant", "1.")), GREEDY)
    async with llama_backend(llama, timeout=120.0) as b:
        mode = await b.prefix_mode()
        text, _, _ = await complete(b, request)
    assert mode == ("continue" if llama.kind == "llama-server" else "drop")
    assert text.strip() and not text.lstrip().startswith("1."), text
    assert "2." in text, text  # the list goes on


@pytest.mark.parametrize("mode", ["continue", "drop"])
async def test_only_llama_server_continues_a_word(llama: LlamaServer, mode: str) -> None:
    """A prefix that ends inside a word: continued, the answer starts with the rest of that
    word (lower case, no space); a new turn starts a fresh line ("1." or a capital)."""
    request = Request((FRUITS, Message("assistant", "1. Strawb")), Sampling(8, temperature=0.0))
    async with llama_backend(llama, timeout=120.0, assistant_prefix=mode) as b:
        text, _, _ = await complete(b, request)
    continued = text[:1].isalpha() and text[:1].islower()
    assert continued == (mode == "continue" and llama.kind == "llama-server"), text
