"""The limits each engine states (`Engine.limits`, `FallbackEngine.limits`) over the embedded
SmolLM2 are the bounds its own submit enforces, and the server refuses exactly what does not
fit them: a request of `max_request_tokens` runs, one token more is the same 400 as always.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import torch
from conftest import KEY, MODEL, Served

from parafill.backends.base import Capabilities
from parafill.backends.engine.engine import Engine, EngineConfig
from parafill.backends.engine.fallback import FallbackEngine
from parafill.backends.engine.kv import BudgetError
from parafill.backends.engine.model import CompactLM
from parafill.backends.engine.sampling import GenParams
from parafill.backends.engine.weights import ModelNotFound, default_gguf, load
from parafill.backends.local import LocalBackend
from parafill.cli.serve import _kv
from parafill.server import ServerSettings, create_app

VOCAB = 49152  # SmolLM2's
ASKED = 8  # max_tokens of every request here


@pytest.fixture(scope="module")
def smol() -> Iterator[tuple[Any, Any]]:
    """The embedded model (HF, fp32 CPU) and its tokenizer, for engines built here."""
    try:
        default_gguf()
    except ModelNotFound as exc:
        pytest.skip(str(exc))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load(None)
    torch.set_num_threads(threads)


def _ids(tok: Any, n: int) -> list[int]:
    ids = [int(i) for i in tok.encode("The sea is calm tonight. " * 200)][:n]
    assert len(ids) == n
    return ids


def _engines(hf: Any) -> dict[str, Engine | FallbackEngine]:
    rows = EngineConfig(budget_tokens=1024, rows=2, decode="eager")  # a row holds 512 tokens
    return {
        "row": Engine(CompactLM(hf, 600), rows),
        "rotary": Engine(CompactLM(hf, 300), rows),
        "fallback budget": FallbackEngine(hf, EngineConfig(budget_tokens=256), 300),
        "fallback positions": FallbackEngine(hf, EngineConfig(budget_tokens=256), 200),
    }


def test_each_engine_states_the_bounds_its_submit_enforces(smol: tuple[Any, Any]) -> None:
    hf, tok = smol
    room = {"row": 512, "rotary": 300, "fallback budget": 256, "fallback positions": 200}
    for name, eng in _engines(hf).items():
        lim = eng.limits
        assert lim.max_request_tokens == room[name], name
        assert lim.vocab == VOCAB == hf.config.vocab_size == len(tok), name
        fits = _ids(tok, lim.max_request_tokens - ASKED)
        eng.submit(fits, GenParams(max_tokens=ASKED))  # queued: it fits
        with pytest.raises(BudgetError):
            eng.submit(fits + [fits[0]], GenParams(max_tokens=ASKED))
        eng.submit([lim.vocab - 1], GenParams(max_tokens=1))
        with pytest.raises(ValueError, match="outside the vocabulary"):
            eng.submit([lim.vocab], GenParams(max_tokens=1))


def test_limits_describe_the_kv_cache_and_what_the_engine_does(smol: tuple[Any, Any]) -> None:
    hf, tok = smol
    engines = _engines(hf)
    row, rotary, fallback = engines["row"], engines["rotary"], engines["fallback budget"]
    assert isinstance(row, Engine)
    assert (row.limits.kv_rows, row.limits.kv_row_tokens, row.limits.kv_tokens) == (2, 512, 1024)
    assert row.limits.max_positions == 600 and rotary.limits.max_positions == 300
    assert row.limits.kv_bytes == row.cache.nbytes
    assert _kv(row.limits) == f"KV cache 2 x 512 tokens, {row.cache.nbytes / 2**20:.1f} MiB"
    assert fallback.limits.kv_bytes is None and fallback.limits.kv_tokens == 256
    assert _kv(fallback.limits) == "KV budget 256 tokens (HF fallback)"
    caps = {name: LocalBackend(eng, tok).capabilities for name, eng in engines.items()}
    assert caps["row"] == Capabilities(True, True, False, 2, True, constrains=True)
    assert caps["fallback budget"] == Capabilities(False, False, False, 256, False)
    tree = Engine(CompactLM(hf, 600), EngineConfig(mode="tree", budget_tokens=512, speculate="off"))
    tree_caps = LocalBackend(tree, tok).capabilities
    assert tree_caps == Capabilities(True, True, True, 256, False, constrains=True)
    assert tree.limits.max_request_tokens == 512 and tree.limits.kv_rows == 1


def _body(tok: Any, prompt: list[int]) -> dict[str, Any]:
    eos = {str(tok.eos_token_id): 100}  # it ends at once: one forward over the prompt
    return {"model": MODEL, "prompt": prompt, "max_tokens": ASKED, "logit_bias": eos}


def _refusal(n: int, room: int) -> str:
    return (
        f"this model's context holds {room} tokens; the prompt has {n} and max_tokens asks "
        f"for {ASKED}"
    )


def _check_edge(response: httpx.Response, over: httpx.Response, n: int, room: int) -> None:
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] == n
    assert over.status_code == 400
    error = over.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "prompt"
    assert error["message"] == _refusal(n + 1, room)


def test_server_refuses_one_token_past_the_engine_limit(served: Served) -> None:
    backend = served.backend
    room = backend.limits.max_request_tokens
    assert room == 512  # conftest: 4096 tokens in 8 rows
    n = room - ASKED
    ids = _ids(backend.tokenizer, n + 1)
    auth = {"authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=served.url, headers=auth, timeout=120) as http:
        fits = http.post("/completions", json=_body(backend.tokenizer, ids[:n]))
        over = http.post("/completions", json=_body(backend.tokenizer, ids))
    _check_edge(fits, over, n, room)


@pytest.mark.anyio
async def test_server_over_the_fallback_engine_uses_its_limits(smol: tuple[Any, Any]) -> None:
    hf, tok = smol
    backend = LocalBackend(FallbackEngine(hf, EngineConfig(budget_tokens=256), 200), tok)
    n = 200 - ASKED
    ids = _ids(tok, n + 1)
    app = create_app(backend, ServerSettings(model_name=MODEL))
    transport = httpx.ASGITransport(app=app)
    async with (
        backend.running(),
        httpx.AsyncClient(transport=transport, base_url="http://parafill/v1") as http,
    ):
        fits = await http.post("/completions", json=_body(tok, ids[:n]), timeout=120)
        over = await http.post("/completions", json=_body(tok, ids), timeout=120)
        bad = await http.post("/completions", json=_body(tok, [VOCAB]))
    _check_edge(fits, over, n, 200)
    assert bad.status_code == 400
    assert "outside the vocabulary (0..49151): 49152" in bad.json()["error"]["message"]
