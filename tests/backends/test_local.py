"""The local backend over the embedded SmolLM2-135M (fp32, CPU), one engine for the module.

Concurrent streams batch into shared forward passes yet produce each request's solo text;
stop strings cut; a cancelled consumer frees its engine room; over-budget requests fail clearly.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import anyio
import pytest
import torch

from parafill.backends.base import BackendError, Request, Sampling, complete
from parafill.backends.engine.weights import ModelNotFound, default_gguf, load
from parafill.backends.local import LocalBackend, LocalConfig

pytestmark = pytest.mark.anyio

QUESTIONS = (
    "Write a short poem about the sea.",
    "Explain what a compiler does.",
    "Describe a walk in a forest.",
    "Tell me about the history of bread.",
)
N = 16


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """A 135M model on a busy 2-core box runs faster on one thread than on two that wait
    for each other; torch's setting is process-wide, so it covers the engine thread too."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
async def local() -> AsyncIterator[LocalBackend]:
    try:
        default_gguf()
    except ModelNotFound as exc:
        pytest.skip(str(exc))
    # fp32: these tests compare with the HF model's own greedy text (the default, int4, is
    # exact against one-at-a-time decoding with its own weights: tests/engine/test_quant_exact)
    cfg = LocalConfig(budget_tokens=4096, rows=8, weights="fp32")
    async with LocalBackend.open(cfg) as backend:
        yield backend


def _req(question: str, max_tokens: int = N, stop: tuple[str, ...] = ()) -> Request:
    return Request.chat(question, sampling=Sampling(max_tokens=max_tokens, stop=stop))


@pytest.fixture(scope="module")
async def alone(local: LocalBackend) -> list[tuple[str, int, str | None]]:
    return [await complete(local, _req(q)) for q in QUESTIONS]


@pytest.fixture(scope="module")
async def together(local: LocalBackend) -> tuple[list[tuple[str, int, str | None]], int]:
    """The same requests, concurrently; also the forward passes they took."""
    results: list[tuple[str, int, str | None]] = [("", 0, None)] * len(QUESTIONS)
    before = local.forward_passes

    async def one(i: int) -> None:
        results[i] = await complete(local, _req(QUESTIONS[i]))

    async with anyio.create_task_group() as tg:
        for i in range(len(QUESTIONS)):
            tg.start_soon(one, i)
    return results, local.forward_passes - before


def _empty(local: LocalBackend) -> bool:
    eng, cache = local.engine, local.engine.cache
    kept = sum(len(s.cols) for s in eng.cached)  # retained prefixes: evicted when needed
    return not (eng.live or eng.waiting) and int(cache.refs.sum()) == kept


async def _idle(local: LocalBackend, seconds: float = 10) -> None:
    """Wait until the engine holds no sequence and no KV column beyond its prefix cache (it
    runs in its own thread)."""
    with anyio.fail_after(seconds):
        while not _empty(local):
            await anyio.sleep(0.02)


@pytest.fixture(scope="module")
def reference() -> torch.nn.Module:
    return load(None)[0]  # the same weights as the backend's, as a plain HF model


async def test_solo_text_is_the_reference_greedy_text(
    local: LocalBackend, alone: list[tuple[str, int, str | None]], reference: torch.nn.Module
) -> None:
    tok = local.tokenizer
    prompt = local.encode(_req(QUESTIONS[0]).messages)
    ids = torch.tensor([prompt])
    with torch.inference_mode():  # explicit mask: SmolLM2's pad id is its eos, used in prompts
        out = reference.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=N, do_sample=False,
            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        )
    want = tok.decode(out[0, len(prompt):], skip_special_tokens=True)
    assert alone[0][0] == want
    assert alone[0][1] == N and alone[0][2] == "length"


async def test_concurrent_streams_match_each_alone(
    alone: list[tuple[str, int, str | None]],
    together: tuple[list[tuple[str, int, str | None]], int],
) -> None:
    assert together[0] == alone
    assert all(text for text, _, _ in alone)


async def test_concurrent_requests_share_forward_passes(
    together: tuple[list[tuple[str, int, str | None]], int],
) -> None:
    results, passes = together
    tokens = sum(n for _, n, _ in results)
    assert tokens >= 3 * N
    assert passes < tokens / 2  # one forward serves all four requests
    assert passes >= max(n for _, n, _ in results)


async def test_stop_string_cuts_the_text(
    local: LocalBackend, alone: list[tuple[str, int, str | None]]
) -> None:
    text = alone[1][0]
    k = len(text) // 2
    stop = text[k : k + 4]
    cut = text.find(stop)
    assert cut > 0
    got, tokens, finish = await complete(local, _req(QUESTIONS[1], stop=("\x00never", stop)))
    assert (got, finish) == (text[:cut], "stop")
    assert 0 < tokens < N


async def test_stop_string_frees_the_engine_room(local: LocalBackend) -> None:
    await _idle(local)
    first, _, _ = await complete(local, _req(QUESTIONS[2], max_tokens=4))
    stop = first.strip()[:3]
    assert stop
    before = local.forward_passes
    try:
        _, _, finish = await complete(local, _req(QUESTIONS[2], max_tokens=400, stop=(stop,)))
        assert finish == "stop"
        await _idle(local, seconds=3)  # decoding on to 400 tokens would take far longer
        assert local.forward_passes - before < 40
    finally:  # leave an idle engine to the next test either way
        for seq in list(local.engine.live):
            local.engine.cancel(seq.id)


async def test_cancelled_consumer_frees_its_engine_room(local: LocalBackend) -> None:
    await _idle(local)
    got: list[str] = []
    with anyio.move_on_after(1.0) as scope:
        async for chunk in local.stream(_req(QUESTIONS[3], max_tokens=400)):
            got.append(chunk.text)
    assert scope.cancelled_caught
    assert got  # it was decoding when cancelled
    await _idle(local, seconds=2)  # 400 tokens would take far longer than this
    assert _empty(local)


async def test_request_over_the_budget_is_refused(local: LocalBackend) -> None:
    with pytest.raises(BackendError, match="KV slots.*holds 512") as info:
        await complete(local, _req(QUESTIONS[0], max_tokens=600))
    assert info.value.retryable is False
    assert not local.engine.waiting


async def test_logprobs_reach_the_node_result(
    local: LocalBackend, reference: torch.nn.Module
) -> None:
    """The chunks' summed log-probabilities equal the HF model's for the same greedy tokens,
    and the runner's NodeResult carries that sum."""
    from parafill.orchestrator.plan import Node, Plan
    from parafill.orchestrator.runner import run_plan

    tok = local.tokenizer
    prompt = local.encode(_req(QUESTIONS[0]).messages)
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        out = reference.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=N, do_sample=False,
            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
            output_scores=True, return_dict_in_generate=True,
        )
    chosen = out.sequences[0, len(prompt):]
    steps = zip(out.scores, chosen, strict=True)
    want = sum(float(torch.log_softmax(s[0].float(), -1)[t]) for s, t in steps)
    got = [c.logprob async for c in local.stream(_req(QUESTIONS[0]))]
    assert all(lp is not None for lp in got)
    assert sum(lp or 0.0 for lp in got) == pytest.approx(want, abs=1e-3)
    result = await run_plan(Plan((Node("a", QUESTIONS[0], max_tokens=N),)), local)
    assert result.results["a"].logprob == pytest.approx(want, abs=1e-3)


async def test_the_engine_decodes_on_while_the_event_loop_is_busy(
    local: LocalBackend, alone: list[tuple[str, int, str | None]]
) -> None:
    """The engine thread hands each step to the loop without waiting for the loop to take it:
    while the loop is held by synchronous work (a server writing a chunk, a slow consumer) the
    next steps compute (an engine that waited would stall at its next step until the 60 s
    bound), and the stream then delivers every token in order: the same text as alone."""
    stream = local.stream(_req(QUESTIONS[0]))
    first = await anext(stream)
    start, bound = local.forward_passes, time.monotonic() + 60
    while local.forward_passes < start + 5 and time.monotonic() < bound:
        time.sleep(0.01)  # noqa: ASYNC251 -- blocks the loop: nothing takes the outputs
    assert local.forward_passes >= start + 5
    chunks = [first] + [c async for c in stream]
    assert "".join(c.text for c in chunks) == alone[0][0]
    assert sum(c.tokens for c in chunks) == N


async def test_the_grammar_tokenizer_view_is_built_while_the_engine_loads() -> None:
    """`open` builds the grammar library's tokenizer view in a thread beside the engine; the
    first constrained request uses it (equal to one built afterwards) and answers in shape."""
    from parafill.constraints import regex, tokenizer_info

    async with LocalBackend.open(LocalConfig(budget_tokens=1024, rows=2)) as backend:
        warming = backend._warming
        assert warming is not None
        req = Request.chat("Pick a number.", sampling=Sampling(max_tokens=8))
        req = Request(req.messages, req.sampling, constraint=regex(r"[0-9]{2}"))
        text, _, _ = await complete(backend, req)
        assert backend._warming is None and backend._info is warming.result()
        fresh = tokenizer_info(backend.tokenizer, backend.limits.vocab, sorted(backend._eos))
        assert backend._info == fresh  # same key, vocabulary width and end ids
        assert len(text) == 2 and text.isdigit(), text
