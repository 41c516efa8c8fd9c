"""Token log-probabilities reported with each step's tokens: equal (fp32, CPU) to the HF
model's own log-softmax at the chosen token, in every packing mode and on the static path,
for greedy and sampled requests; and carried up to the runner's NodeResult."""

from __future__ import annotations

import pytest
import torch
from engine_ref import hf_logits, make_engine, rand_prompt

from parafill.backends.engine.sampling import GenParams

MODES = ["rows", "tree", "rows-static", "tree-static"]


@pytest.mark.parametrize("mode", MODES)
def test_logprobs_match_the_hf_forward(
    mode: str, tiny_models: dict[str, torch.nn.Module]
) -> None:
    hf = tiny_models["qwen2"]
    gen = torch.Generator().manual_seed(31)
    prompts = [rand_prompt(gen, 9 + 3 * i) for i in range(3)]
    params = [GenParams(6), GenParams(6, temperature=0.8, seed=4), GenParams(5)]
    eng, _ = make_engine(hf, mode=mode, budget_tokens=256, rows=4)
    ids = [eng.submit(p, g) for p, g in zip(prompts, params, strict=True)]
    toks: dict[int, list[int]] = {i: [] for i in ids}
    lps: dict[int, list[float]] = {i: [] for i in ids}
    for _ in range(40):
        for o in eng.step():
            assert len(o.logprobs) == len(o.tokens)
            toks[o.seq_id] += o.tokens
            lps[o.seq_id] += o.logprobs
    for i, p in zip(ids, prompts, strict=True):
        assert len(toks[i]) > 0
        full = p + toks[i]
        logp = torch.log_softmax(hf_logits(hf, full), dim=-1)  # (T, V)
        want = [float(logp[len(p) - 1 + k, t]) for k, t in enumerate(toks[i])]
        assert lps[i] == pytest.approx(want, abs=1e-4)
        assert all(x <= 0 for x in lps[i])


def _collect(eng: object, ids: list[int]) -> dict[int, list[tuple[int, object]]]:
    got: dict[int, list[tuple[int, object]]] = {i: [] for i in ids}
    for _ in range(60):
        for o in eng.step():  # type: ignore[attr-defined]
            assert len(o.top) == len(o.tokens)
            got[o.seq_id] += list(zip(o.tokens, o.top, strict=True))
    return got


def _check_top(hf: torch.nn.Module, prompt: list[int], got: list[tuple[int, object]], k: int,
               greedy_row: bool) -> None:
    toks = [t for t, _ in got]
    logp = torch.log_softmax(hf_logits(hf, prompt + toks), dim=-1)
    for j, (tok, top) in enumerate(got):
        assert isinstance(top, tuple)
        if k == 0:
            assert top == ()
            continue
        row = logp[len(prompt) - 1 + j]
        want_v, want_i = row.topk(k)
        assert [t for t, _ in top] == want_i.tolist()
        assert [v for _, v in top] == pytest.approx(want_v.tolist(), abs=1e-4)
        if greedy_row:
            assert top[0][0] == tok  # the greedy token is the most likely one


@pytest.mark.parametrize("mode", MODES)
def test_top_logprobs_match_the_hf_forward(
    mode: str, tiny_models: dict[str, torch.nn.Module]
) -> None:
    hf = tiny_models["llama"]
    gen = torch.Generator().manual_seed(32)
    prompts = [rand_prompt(gen, 7 + 4 * i) for i in range(3)]
    params = [GenParams(6, top_logprobs=5), GenParams(6, 0.9, seed=2, top_logprobs=20),
              GenParams(5)]
    eng, _ = make_engine(hf, mode=mode, budget_tokens=256, rows=4)
    ids = [eng.submit(p, g) for p, g in zip(prompts, params, strict=True)]
    got = _collect(eng, ids)
    for i, p, g in zip(ids, prompts, params, strict=True):
        assert len(got[i]) == g.max_tokens
        _check_top(hf, p, got[i], g.top_logprobs, g.temperature == 0)
    # asking for alternatives does not change the tokens
    eng2, _ = make_engine(hf, mode=mode, budget_tokens=256, rows=4)
    plain = [GenParams(g.max_tokens, g.temperature, g.top_p, g.seed) for g in params]
    ids2 = [eng2.submit(p, g) for p, g in zip(prompts, plain, strict=True)]
    got2 = _collect(eng2, ids2)
    assert [[t for t, _ in got[i]] for i in ids] == [[t for t, _ in got2[i]] for i in ids2]


def test_top_logprobs_on_the_hf_fallback(gpt2: torch.nn.Module) -> None:
    from parafill.backends.engine.engine import EngineConfig
    from parafill.backends.engine.fallback import FallbackEngine

    hf = gpt2
    eng = FallbackEngine(hf, EngineConfig(budget_tokens=128), 128)
    prompt = rand_prompt(torch.Generator().manual_seed(3), 6)
    i = eng.submit(prompt, GenParams(5, top_logprobs=3))
    _check_top(hf, prompt, _collect(eng, [i])[i], 3, True)
