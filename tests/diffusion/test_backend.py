"""DiffusionBackend: the decoder behind parafill's Backend protocol, over a tiny random
Fast_dLLM_v2-shape checkpoint with the embedded SmolLM2 tokenizer (saved beside it).

Concurrent streams are decoded in one batch yet give each prompt's solo tokens; refusals
(sampling, constraints, bad prompts) fail only their own request; stop strings cut; a
skeleton-of-thought plan runs to the end on it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest
import torch
from diffusion_ref import make_qwen_bd
from transformers import AutoTokenizer
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from parafill.backends.base import (
    Backend,
    BackendError,
    Chunk,
    Message,
    Request,
    Sampling,
    complete,
)
from parafill.backends.engine.weights import ModelNotFound, resolve
from parafill.diffusion import DiffusionLM, load
from parafill.diffusion.backend import DiffusionBackend
from parafill.diffusion.model import Forward
from parafill.orchestrator.plan import Growth, Node, Plan
from parafill.orchestrator.runner import run_plan
from parafill.planners.skeleton import SkeletonPlanner

pytestmark = pytest.mark.anyio

QUESTIONS = (
    "Write a short poem about the sea.",
    "Explain what a compiler does.",
    "Describe a walk in a forest in some detail, please.",
    "Hi",
)
N = 20
BLOCK = 8


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerBase:
    try:
        path = resolve(None)
    except ModelNotFound as exc:
        pytest.skip(str(exc))
    tok: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return tok


@pytest.fixture(scope="module")
def checkpoint(
    tmp_path_factory: pytest.TempPathFactory, tokenizer: PreTrainedTokenizerBase
) -> Path:
    """SmolLM2's 49152 tokens, the head padded to a multiple of 64 with the mask id right after
    the last token; an output head scaled up so that steps reveal several tokens."""
    n = len(tokenizer)
    eos = int(tokenizer.eos_token_id)
    vocab = (-(-(n + 1) // 64) * 64, n, eos)
    path = make_qwen_bd(tmp_path_factory.mktemp("dbackend") / "m", 3, BLOCK, 12.0, vocab)
    tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def model(checkpoint: Path) -> DiffusionLM:
    return load(checkpoint)


@pytest.fixture(scope="module")
async def backend(checkpoint: Path) -> AsyncIterator[DiffusionBackend]:
    async with DiffusionBackend.open(checkpoint, block=BLOCK, max_batch=8) as b:
        yield b


def _req(q: str, max_tokens: int = N, **kw: object) -> Request:
    return Request.chat(q, sampling=Sampling(max_tokens=max_tokens, **kw))  # type: ignore[arg-type]


async def _chunks(b: Backend, r: Request) -> list[Chunk]:
    return [c async for c in b.stream(r)]


async def _together(b: Backend, requests: list[Request]) -> list[list[Chunk] | BaseException]:
    out: list[list[Chunk] | BaseException] = [[] for _ in requests]

    async def one(i: int) -> None:
        try:
            out[i] = await _chunks(b, requests[i])
        except BackendError as exc:
            out[i] = exc

    async with anyio.create_task_group() as tg:
        for i in range(len(requests)):
            tg.start_soon(one, i)
    return out


async def test_concurrent_requests_decode_in_one_batch_and_equal_solo_generate(
    backend: DiffusionBackend, model: DiffusionLM
) -> None:
    before = len(backend.batch_sizes)
    got = await _together(backend, [_req(q, N + i) for i, q in enumerate(QUESTIONS)])
    sizes = backend.batch_sizes[before:]
    assert max(sizes) == len(QUESTIONS)  # every request was in flight in one forward
    passes = 0
    for i, (q, chunks) in enumerate(zip(QUESTIONS, got, strict=True)):
        assert isinstance(chunks, list) and len(chunks) == 1
        c = chunks[0]
        ids = backend.encode((Message("user", q),))
        alone = model.generate(
            [ids],
            N + i,
            block=BLOCK,
            threshold=0.9,
            cache="dual",
            eos=(backend.tokenizer.eos_token_id,),
        ).results[0]
        assert c.token_ids == alone.tokens
        assert c.tokens == len(alone.tokens)
        assert c.finish_reason == ("stop" if alone.finish == "eos" else "length")
        assert c.fill is not None and c.fill.passes == alone.forwards
        assert (c.fill.drafted, c.fill.accepted) == (0, 0)
        assert c.text == backend.tokenizer.decode(
            [t for t in alone.tokens if t < len(backend.tokenizer)], skip_special_tokens=True
        )
        passes += alone.forwards
    assert len(sizes) < passes  # shared forwards: fewer than the requests alone took
    assert any(
        c.fill.passes < len(c.token_ids) for g in got for c in g if isinstance(g, list) and c.fill
    )


async def test_refusals_fail_alone(backend: DiffusionBackend) -> None:
    good = [_req(q) for q in QUESTIONS[:2]]
    bad = [
        _req("warm", temperature=0.7),
        _req("x " * 600),  # past the checkpoint's 512 positions
        _req("biased", logit_bias=((5, 1.0),)),
    ]
    got = await _together(backend, [good[0], *bad, good[1]])
    assert isinstance(got[0], list) and isinstance(got[-1], list)
    assert got[0][0].finish_reason is not None and got[-1][0].finish_reason is not None
    temp, long, biased = got[1:4]
    assert isinstance(temp, BackendError) and not temp.retryable
    assert "diffusion decoding is greedy only" in str(temp)
    assert isinstance(long, BackendError) and "512" in str(long)
    assert isinstance(biased, BackendError) and "logit" in str(biased)
    empty = [c async for c in _empty_then(backend)]
    assert empty == ["empty", "ok"]


async def _empty_then(backend: DiffusionBackend) -> AsyncIterator[str]:
    """An empty prompt (raw ids) fails; a request after it is served."""
    try:
        async for _ in backend.stream_ids([], Sampling(max_tokens=4)):
            pass
    except BackendError as exc:
        assert "empty" in str(exc)
        yield "empty"
    async for c in backend.stream_ids([1, 2, 3], Sampling(max_tokens=4)):
        assert c.finish_reason is not None
        yield "ok"


async def test_constraints_are_refused(backend: DiffusionBackend) -> None:
    from parafill.constraints.spec import Constraint

    req = Request(
        (Message("user", "json"),), Sampling(max_tokens=4), constraint=Constraint("regex", "a+")
    )
    with pytest.raises(BackendError, match="constraints"):
        await complete(backend, req)
    assert backend.capabilities.constrains is False
    caps = backend.capabilities
    assert (caps.batched, caps.shared_prefix, caps.speculates) == (True, False, False)
    lim = backend.limits
    assert (lim.vocab, lim.max_request_tokens, lim.max_seqs) == (backend.model.spec.vocab, 512, 8)


async def test_stop_strings_cut_the_text(backend: DiffusionBackend) -> None:
    q = QUESTIONS[2]
    text, tokens, _ = await complete(backend, _req(q, 24))
    body = text.lstrip()
    assert len(body) > 6, text
    stop = body[len(body) // 2 : len(body) // 2 + 2]
    cut = text.find(stop, len(text) - len(body))
    chunks = await _chunks(backend, _req(q, 24, stop=(stop, "\x00never")))
    c = chunks[0]
    assert c.text == text[:cut]
    assert c.finish_reason == "stop"
    assert 0 < c.tokens <= tokens
    # the tokens kept are the shortest prefix whose text holds the stop string
    dec = backend.tokenizer.decode(list(c.token_ids), skip_special_tokens=True)
    assert stop in dec[len(text) - len(body) :]


async def test_a_cancelled_stream_leaves_the_batch(backend: DiffusionBackend) -> None:
    before = backend.forward_passes
    with anyio.move_on_after(0.02):
        await complete(backend, _req(QUESTIONS[0], 400))  # at least 50 forwards (blocks of 8)
    with anyio.fail_after(10):
        while not backend.idle:
            await anyio.sleep(0.005)
    assert backend.forward_passes - before < 50  # its row left the batch when it was cancelled
    text, _, finish = await complete(backend, _req(QUESTIONS[1], 4))
    assert finish is not None


async def test_a_failed_forward_fails_its_batch_only(
    model: DiffusionLM, tokenizer: PreTrainedTokenizerBase, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = DiffusionBackend(model, tokenizer, block=BLOCK)
    real = Forward.__call__
    calls = {"n": 0}

    def flaky(self, q, kv):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("device lost")
        return real(self, q, kv)

    monkeypatch.setattr(Forward, "__call__", flaky)
    async with b.running():
        got = await _together(b, [_req(q) for q in QUESTIONS[:3]])
        assert all(isinstance(g, BackendError) and "device lost" in str(g) for g in got), got
        assert b.idle
        chunks = await _chunks(b, _req(QUESTIONS[0]))  # the backend still serves
        assert chunks[0].finish_reason is not None


async def test_skeleton_plan_runs_on_the_diffusion_backend(
    checkpoint: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    """The skeleton's grammar is dropped (the backend cannot constrain) and its garbage
    output falls back to a direct answer; with a skeleton that parses, the points are filled
    in one batch."""
    planner = SkeletonPlanner(skeleton_tokens=16, point_tokens=24, direct_tokens=16)
    async with DiffusionBackend.open(checkpoint, tokenizer, max_batch=4) as b:
        result = await run_plan(
            planner.plan("How do I learn piano?"), b, expanders=planner.expanders
        )
        assert set(result.results) == {"skeleton", "direct"}
        assert all(r.finish_reason in ("stop", "length") for r in result.results.values())
        assert any("constraints ignored" in n for n in result.notes)
        assert result.forward_passes is not None and result.forward_passes > 0

        def parsed(node: Node, text: str) -> Growth:
            return planner.expanders["skeleton"](node, " Find a teacher\n2. Practice\n3. Listen")

        before = len(b.batch_sizes)
        plan: Plan = planner.plan("How do I learn piano?")
        result = await run_plan(plan, b, expanders={"skeleton": parsed})
        points = [f"point-{k}" for k in (1, 2, 3)]
        assert set(result.results) == {"skeleton", *points}
        assert all(result.results[p].fill is not None for p in points)
        assert max(b.batch_sizes[before:]) == 3  # the three points decoded together
        assert result.answer.count("\n\n") == 2
