"""The official `openai` client against `parafill serve`: models, chat and completions, whole and
streamed; texts equal what the LocalBackend produces directly at temperature 0; usage counts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import KEY, MODEL, Served
from openai import OpenAI

from parafill.backends.base import Message, Request, Sampling, complete
from parafill.backends.local import LocalBackend

QUESTION = "Explain what a compiler does."
N = 12


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[OpenAI]:
    with OpenAI(base_url=served.url, api_key=KEY, max_retries=0, timeout=120) as c:
        yield c


def _direct(served: Served, question: str, sampling: Sampling) -> tuple[str, int, str | None]:
    req = Request((Message("user", question),), sampling)
    return served.portal.call(complete, served.backend, req)


async def _raw(backend: LocalBackend, ids: list[int], n: int) -> tuple[str, int]:
    parts, tokens = [], 0
    async for c in backend.stream_ids(ids, Sampling(max_tokens=n)):
        parts.append(c.text)
        tokens += c.tokens
    return "".join(parts), tokens


def test_models_lists_the_model_and_the_pipeline(client: OpenAI) -> None:
    assert [m.id for m in client.models.list()] == [MODEL, "parafill-sot"]


def test_chat_equals_the_local_backend_and_counts_usage(client: OpenAI, served: Served) -> None:
    got = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=N,
        temperature=0,
    )
    want, tokens, finish = _direct(served, QUESTION, Sampling(max_tokens=N))
    assert got.choices[0].message.content == want and want
    assert got.choices[0].finish_reason == finish == "length"
    prompt = len(served.backend.encode((Message("user", QUESTION),)))
    assert got.usage is not None
    assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (prompt, tokens) == (prompt, N)
    assert got.usage.total_tokens == prompt + N
    assert got.object == "chat.completion" and got.id.startswith("chatcmpl-")


def test_streamed_chat_equals_the_whole_one(client: OpenAI) -> None:
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}]
    whole = client.chat.completions.create(
        model=MODEL,
        messages=msgs,
        max_tokens=N,  # type: ignore[arg-type]
        temperature=0,
    )
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=msgs,
            max_tokens=N,
            temperature=0,
            stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and not any(finishes[:-1])
    assert not chunks[-1].choices and chunks[-1].usage == whole.usage  # the usage chunk
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


def test_completions_use_the_raw_prompt(client: OpenAI, served: Served) -> None:
    prompt = "The three primary colors are"
    got = client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0)
    ids = list(served.backend.tokenizer.encode(prompt, add_special_tokens=False))
    want, tokens = served.portal.call(_raw, served.backend, ids, 8)
    assert got.choices[0].text == want and want.strip()
    assert got.usage is not None and (got.usage.prompt_tokens, got.usage.completion_tokens) == (
        len(ids),
        tokens,
    )
    streamed = client.completions.create(
        model=MODEL, prompt=[prompt], max_tokens=8, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == want
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=8, temperature=0)
    assert by_ids.choices[0].text == want


def test_stop_strings_and_max_completion_tokens(client: OpenAI, served: Served) -> None:
    text, _, _ = _direct(served, QUESTION, Sampling(max_tokens=N))
    k = len(text) // 2
    stop = text[k : k + 3]
    got = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": QUESTION}],
        temperature=0,
        max_completion_tokens=N,
        stop=["\x00never", stop],
    )
    assert got.choices[0].message.content == text[: text.find(stop)]
    assert got.choices[0].finish_reason == "stop"
    assert got.usage is not None and got.usage.completion_tokens < N


def test_seed_makes_sampling_reproducible(client: OpenAI) -> None:
    def once(seed: int) -> str | None:
        got = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Name a fruit."}],
            max_tokens=6,
            temperature=1.5,
            top_p=1.0,
            seed=seed,
        )
        return got.choices[0].message.content

    assert once(11) == once(11)
    assert len({once(s) for s in (1, 2, 3)}) > 1  # the seed reaches the sampler


async def _entries(backend: LocalBackend, question: str) -> list[tuple[str, float]]:
    req = Request((Message("user", question),), Sampling(max_tokens=N))
    out = []
    async for c in backend.stream(req):
        pairs = zip(c.token_ids, c.token_logprobs, strict=True)
        out += [(backend.tokenizer.decode([t]), lp) for t, lp in pairs]
    return out


def test_chat_logprobs_whole_and_streamed(client: OpenAI, served: Served) -> None:
    """logprobs=true: one entry per completion token, its text and the engine's log p (the
    engine's values are checked against the HF forward in tests/engine/test_logprobs.py)."""
    msgs = [{"role": "user", "content": QUESTION}]
    whole = client.chat.completions.create(
        model=MODEL, messages=msgs, max_tokens=N, temperature=0, logprobs=True  # type: ignore[arg-type]
    )
    content = whole.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == N == whole.usage.completion_tokens  # type: ignore[union-attr]
    assert "".join(t.token for t in content) == whole.choices[0].message.content
    assert all(t.logprob <= 0 and t.bytes == list(t.token.encode()) for t in content)
    want = served.portal.call(_entries, served.backend, QUESTION)
    assert [t.token for t in content] == [w[0] for w in want]
    assert [t.logprob for t in content] == pytest.approx([w[1] for w in want], abs=1e-5)
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=msgs, max_tokens=N, temperature=0, logprobs=True, stream=True  # type: ignore[arg-type]
        )
    )
    streamed = [
        t
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content or []
    ]
    assert [t.token for t in streamed] == [t.token for t in content]
    # the second request reuses the first one's prompt KV (prefix cache): fp32 rounding differs
    assert [t.logprob for t in streamed] == pytest.approx([t.logprob for t in content], abs=1e-4)
    plain = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=2)  # type: ignore[arg-type]
    assert plain.choices[0].logprobs is None


async def _tops(backend: LocalBackend, question: str, k: int) -> list[list[tuple[str, float]]]:
    req = Request((Message("user", question),), Sampling(max_tokens=N, top_logprobs=k))
    out = []
    async for c in backend.stream(req):
        out += [[(backend.tokenizer.decode([t]), v) for t, v in top] for top in c.token_top]
    return out


def test_chat_top_logprobs_whole_and_streamed(client: OpenAI, served: Served) -> None:
    """top_logprobs=k: at each position the k most likely tokens, best first, from the engine
    (whose values are checked against the HF forward in tests/engine/test_logprobs.py); the
    greedy token is the first of them."""
    msgs = [{"role": "user", "content": QUESTION}]
    kw = {"model": MODEL, "messages": msgs, "max_tokens": N, "temperature": 0,
          "logprobs": True, "top_logprobs": 5}
    whole = client.chat.completions.create(**kw)  # type: ignore[call-overload]
    content = whole.choices[0].logprobs.content
    assert len(content) == N
    for t in content:
        assert len(t.top_logprobs) == 5
        lps = [a.logprob for a in t.top_logprobs]
        assert lps == sorted(lps, reverse=True) and all(x <= 0 for x in lps)
        assert t.top_logprobs[0].token == t.token  # greedy: the chosen one is the best
        assert t.top_logprobs[0].logprob == pytest.approx(t.logprob, abs=1e-6)
        assert all(a.bytes == list(a.token.encode()) for a in t.top_logprobs)
    want = served.portal.call(_tops, served.backend, QUESTION, 5)
    assert [[a.token for a in t.top_logprobs] for t in content] == [
        [w[0] for w in row] for row in want
    ]
    streamed = [
        t
        for c in client.chat.completions.create(stream=True, **kw)  # type: ignore[call-overload]
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content or []
    ]
    assert [[a.token for a in t.top_logprobs] for t in streamed] == [
        [a.token for a in t.top_logprobs] for t in content
    ]
    plain = client.chat.completions.create(
        model=MODEL, messages=msgs, max_tokens=2, logprobs=True  # type: ignore[arg-type]
    )
    assert all(t.top_logprobs == [] for t in plain.choices[0].logprobs.content)  # type: ignore[union-attr]


def test_openai_backend_reads_parafill_serve_logprobs(served: Served) -> None:
    """parafill's OpenAI-compatible client backend, logprobs on, against parafill serve over
    real HTTP: the per-token log p it reads equal the engine's own."""
    import anyio

    from parafill.backends.openai_http import OpenAIBackend, OpenAIConfig

    async def remote() -> list[float]:
        cfg = OpenAIConfig((served.url,), MODEL, api_key=KEY, logprobs=True, timeout=120.0)
        req = Request((Message("user", QUESTION),), Sampling(max_tokens=N))
        async with OpenAIBackend(cfg) as b:
            return [x async for c in b.stream(req) for x in c.token_logprobs]

    got = anyio.run(remote)
    want = served.portal.call(_entries, served.backend, QUESTION)
    assert len(got) == N
    assert got == pytest.approx([w[1] for w in want], abs=1e-4)


def test_n_choices_are_the_seeded_single_answers(client: OpenAI) -> None:
    """n=3 sampled: three choices decoded together, choice i equal to the single request with
    seed + i (so the draws differ and each reproduces); usage sums the completions."""
    msgs = [{"role": "user", "content": "Name a fruit and say why you like it."}]
    kw = {"model": MODEL, "messages": msgs, "max_tokens": 10, "temperature": 0.9, "top_p": 0.95}
    many = client.chat.completions.create(n=3, seed=7, **kw)  # type: ignore[call-overload]
    assert [c.index for c in many.choices] == [0, 1, 2]
    texts = [c.message.content for c in many.choices]
    alone = [client.chat.completions.create(seed=7 + i, **kw) for i in range(3)]  # type: ignore[call-overload]
    singles = [r.choices[0].message.content for r in alone]
    assert texts == singles
    assert len(set(texts)) > 1
    used = sum(r.usage.completion_tokens for r in alone if r.usage is not None)
    assert many.usage is not None and many.usage.completion_tokens == used > 10
    streamed: dict[int, str] = {0: "", 1: "", 2: ""}
    finishes: dict[int, str | None] = {}
    roles = []
    for chunk in client.chat.completions.create(n=3, seed=7, stream=True, **kw):  # type: ignore[call-overload]
        for c in chunk.choices:
            streamed[c.index] += c.delta.content or ""
            roles += [c.index] if c.delta.role else []
            finishes[c.index] = c.finish_reason or finishes.get(c.index)
    assert [streamed[i] for i in range(3)] == texts
    assert sorted(roles) == [0, 1, 2]
    assert [finishes[i] for i in range(3)] == [c.finish_reason for c in many.choices]


def test_n_greedy_completions_are_identical(client: OpenAI) -> None:
    got = client.completions.create(model=MODEL, prompt="The capital of France is", n=2,
                                    max_tokens=6, temperature=0)
    assert [c.index for c in got.choices] == [0, 1]
    assert got.choices[0].text == got.choices[1].text and got.choices[0].text.strip()


async def _ids(backend: LocalBackend, question: str, s: Sampling) -> list[int]:
    out: list[int] = []
    async for c in backend.stream(Request((Message("user", question),), s)):
        out += c.token_ids
    return out


def test_penalties_and_logit_bias_reach_the_engine(client: OpenAI, served: Served) -> None:
    """frequency / presence penalties and logit_bias: the served text is the backend's own
    with the same adjustments (whose exactness tests/engine/test_penalties.py checks), and a
    banned token never appears."""
    msgs = [{"role": "user", "content": QUESTION}]
    plain = served.portal.call(_ids, served.backend, QUESTION, Sampling(max_tokens=N))
    banned = plain[0]
    got = client.chat.completions.create(
        model=MODEL, messages=msgs, max_tokens=N, temperature=0, frequency_penalty=1.5,  # type: ignore[arg-type]
        presence_penalty=0.5, logit_bias={str(banned): -100},
    )
    s = Sampling(max_tokens=N, frequency_penalty=1.5, presence_penalty=0.5,
                 logit_bias=((banned, -100.0),))
    want = served.portal.call(_ids, served.backend, QUESTION, s)
    assert banned not in want and want != plain
    tok = served.backend.tokenizer
    assert got.choices[0].message.content == tok.decode(want)
