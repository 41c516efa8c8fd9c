"""Architectures the compact forward does not know run on the HF fallback, and still exactly.

A random-weight GPT-2 (learned positions, LayerNorm, GELU: nothing like Llama) through the
fallback engine and through the local backend, against the same greedy HF reference.
"""

from __future__ import annotations

import pytest
import torch
from engine_ref import RefCache, Run, drain, greedy, rand_prompt, step
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from parafill.backends.base import Request, Sampling, complete
from parafill.backends.engine.engine import EngineConfig
from parafill.backends.engine.fallback import FallbackEngine, build_engine
from parafill.backends.engine.kv import BudgetError
from parafill.backends.engine.model import supports
from parafill.backends.local import LocalBackend


def test_unknown_architecture_takes_the_fallback_and_says_so(gpt2: torch.nn.Module) -> None:
    said: list[str] = []
    eng = build_engine(gpt2, EngineConfig(), 256, said.append)
    assert not supports(gpt2)
    assert isinstance(eng, FallbackEngine)
    assert "'gpt2'" in said[0] and "fallback" in said[0]


def test_fallback_matches_reference_with_joins_and_cancel(gpt2: torch.nn.Module) -> None:
    ref = RefCache(gpt2)
    gen = torch.Generator().manual_seed(1)
    prompts = [rand_prompt(gen, n) for n in (5, 9, 7, 12)]
    eng = FallbackEngine(gpt2, EngineConfig(budget_tokens=256), 256)
    run = Run()
    ids = [eng.submit(p, greedy(8)) for p in prompts[:2]]
    step(eng, run, 3)
    ids += [eng.submit(p, greedy(6)) for p in prompts[2:]]
    step(eng, run)
    eng.cancel(ids[0])
    drain(eng, run, ids)
    assert run.finish[ids[0]] == "cancelled"
    assert run.tokens[ids[0]] == ref(prompts[0], 8)[: len(run.tokens[ids[0]])]
    for i, p, n in zip(ids[1:], prompts[1:], (8, 6, 6), strict=True):
        assert run.tokens[i] == ref(p, n)
    with pytest.raises(BudgetError, match="positions"):
        eng.submit(prompts[0], greedy(300))


@pytest.mark.anyio
async def test_local_backend_serves_an_unsupported_model(gpt2: torch.nn.Module) -> None:
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(256)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok)
    backend = LocalBackend(FallbackEngine(gpt2, EngineConfig(budget_tokens=256), 256), hf_tok)
    assert not backend.capabilities.batched
    async with backend.running():
        request = Request.chat("hello", sampling=Sampling(max_tokens=6))
        text, tokens, finish = await complete(backend, request)
    ids = backend.encode(request.messages)
    want = RefCache(gpt2)(ids, 6)
    assert tokens == 6 and finish == "length"
    assert text == hf_tok.decode(want, skip_special_tokens=True)
    assert len(text.split()) == 6  # six real words, e.g. "w17 w203 ..."
