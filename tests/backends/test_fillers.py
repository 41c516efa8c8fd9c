"""Fillers through the backends. Local (embedded SmolLM2-135M, fp32, CPU): a request naming a
drafting filler streams exactly the autoregressive text and token ids, in fewer forward passes
on a prompt that asks for a copy; an unknown filler is a clear, non-retryable error. OpenAI
backend (scripted server): a plan whose nodes name fillers runs as usual, says the fillers were
ignored, and sends no filler to the server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import anyio
import pytest
import torch
from fault_server import fault_server

from parafill.backends.base import BackendError, Chunk, Request, Sampling
from parafill.backends.engine.weights import ModelNotFound, default_gguf
from parafill.backends.local import LocalBackend, LocalConfig
from parafill.backends.openai_http import OpenAIBackend, OpenAIConfig
from parafill.fillers import FillerError
from parafill.orchestrator.plan import Node, Plan
from parafill.orchestrator.runner import run_plan

pytestmark = pytest.mark.anyio

KNOWN = "known: autoregressive, ngram, jacobi, self, draft"
SENTENCE = (
    "The old lighthouse keeper climbed the spiral stairs every evening to light the great "
    "lamp for the ships."
)
PROMPTS = {
    "copy": f"Repeat this text exactly:\n{SENTENCE}",
    "normal": "Explain what a compiler does.",
}
N = 32


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # a 135M model on a busy 2-core box: one thread beats two
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
async def local() -> AsyncIterator[LocalBackend]:
    """speculate="always": drafts are verified whenever a filler proposes them, so the pass
    counts below do not depend on measured step times (the text never does)."""
    try:
        default_gguf()
    except ModelNotFound as exc:
        pytest.skip(str(exc))
    cfg = LocalConfig(budget_tokens=2048, rows=4, speculate="always")
    async with LocalBackend.open(cfg) as backend:
        yield backend


@dataclass(frozen=True)
class Decoded:
    text: str
    ids: tuple[int, ...]
    tokens: int
    finish: str | None
    chunks: tuple[Chunk, ...]


async def _decode(backend: LocalBackend, kind: str, filler: str | None) -> Decoded:
    request = Request.chat(PROMPTS[kind], sampling=Sampling(max_tokens=N))
    chunks = [c async for c in backend.stream(Request(request.messages, request.sampling, filler))]
    text = "".join(c.text for c in chunks)
    ids = tuple(i for c in chunks for i in c.token_ids)
    return Decoded(
        text, ids, sum(c.tokens for c in chunks), chunks[-1].finish_reason, tuple(chunks)
    )


@pytest.fixture(scope="module")
async def reference(local: LocalBackend) -> dict[str, Decoded]:
    return {kind: await _decode(local, kind, "autoregressive") for kind in PROMPTS}


def _fill(d: Decoded) -> tuple[int, int, int]:
    last = d.chunks[-1].fill
    assert last is not None
    return last.passes, last.drafted, last.accepted


async def test_autoregressive_reference_drafts_nothing(reference: dict[str, Decoded]) -> None:
    assert "lighthouse keeper" in reference["copy"].text  # the model does copy
    for d in reference.values():
        assert d.text and len(d.ids) == d.tokens
        passes, drafted, accepted = _fill(d)
        assert (drafted, accepted) == (0, 0) and passes >= d.tokens


@pytest.mark.parametrize("kind", list(PROMPTS))
@pytest.mark.parametrize("filler", ["ngram", "jacobi"])
async def test_drafting_fillers_stream_the_autoregressive_tokens(
    local: LocalBackend, reference: dict[str, Decoded], kind: str, filler: str
) -> None:
    got, want = await _decode(local, kind, filler), reference[kind]
    assert (got.text, got.ids, got.tokens, got.finish) == (
        want.text,
        want.ids,
        want.tokens,
        want.finish,
    )
    passes, drafted, accepted = _fill(got)
    assert 0 <= accepted <= drafted
    assert drafted > 0 or (filler, kind) == ("ngram", "normal")  # the filler was at work
    assert passes <= _fill(want)[0]


async def test_ngram_copies_several_tokens_per_pass(
    local: LocalBackend, reference: dict[str, Decoded]
) -> None:
    got = await _decode(local, "copy", "ngram")
    passes, drafted, accepted = _fill(got)
    assert accepted > 0 and passes < got.tokens
    fills = [c.fill for c in got.chunks]
    assert all(f is not None for f in fills)
    # the stats are the request's so far: they never go down
    seen = [(f.passes, f.drafted, f.accepted) for f in fills if f is not None]
    assert seen == sorted(seen) and seen[-1] == (passes, drafted, accepted)


async def test_no_filler_means_the_backends_default(
    local: LocalBackend, reference: dict[str, Decoded]
) -> None:
    assert local.filler == "autoregressive"
    got = await _decode(local, "copy", None)
    assert got.ids == reference["copy"].ids
    assert _fill(got)[1:] == (0, 0)


async def test_unknown_filler_is_a_clear_error_and_the_engine_serves_on(
    local: LocalBackend, reference: dict[str, Decoded]
) -> None:
    with pytest.raises(BackendError) as info:
        await _decode(local, "normal", "magic")
    assert info.value.retryable is False
    assert f"unknown filler 'magic' ({KNOWN})" in str(info.value)
    assert not local.engine.waiting and not local.engine.live  # nothing was submitted
    assert (await _decode(local, "normal", "ngram")).ids == reference["normal"].ids


async def test_unknown_default_filler_is_refused_when_opening() -> None:
    try:
        default_gguf()
    except ModelNotFound as exc:
        pytest.skip(str(exc))
    with pytest.raises(FillerError, match=KNOWN):
        async with LocalBackend.open(LocalConfig(filler="magic", budget_tokens=256, rows=1)):
            pass


# ---- a backend that does not speculate ---------------------------------------------------------


async def test_openai_backend_runs_filler_nodes_notes_once_and_sends_no_filler() -> None:
    plan = Plan(
        (
            Node("a", "first", filler="ngram", max_tokens=8),
            Node("b", "second {{a}}", ("a",), filler="ngram", max_tokens=8),
            Node("c", "third", filler="ngram", max_tokens=8),
        ),
        answer=("b", "c"),
    )
    async with fault_server() as server:
        cfg = OpenAIConfig(base_urls=(server.url,), model="test", timeout=5.0)
        async with OpenAIBackend(cfg) as backend:
            assert backend.capabilities.speculates is False
            with anyio.fail_after(30):
                result = await run_plan(plan, backend)
    assert result.answer == "Hello world\n\nHello world"
    assert list(result.notes) == ["filler 'ngram' ignored: this backend decodes one token per step"]
    assert len(server.requests) == 3
    for seen in server.requests:
        assert "filler" not in json.loads(seen.body)
