"""OpenAI's frequency / presence penalties and logit bias: exact (fp32, CPU) against an
independent reference that applies the same formula to the HF forward's logits, in every
packing mode (a penalized request takes the eager step on the static path) and on the HF
fallback; bad biases are refused at submit."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from engine_ref import Run, drain, greedy, hf_logits, make_engine, rand_prompt, step

from parafill.backends.engine.sampling import GenParams

MODES = ["rows", "tree", "rows-static", "tree-static"]


def _reference(hf: torch.nn.Module, prompt: list[int], p: GenParams) -> list[int]:
    """Greedy over the HF forward's logits with, in vLLM's order, HF's repetition penalty
    (prompt + output), OpenAI's frequency / presence penalties (output), the logit bias."""
    toks: list[int] = []
    bias = dict(p.logit_bias)
    while len(toks) < p.max_tokens:
        logits = hf_logits(hf, prompt + toks)[-1].tolist()
        for t in set(prompt + toks) if p.repetition_penalty != 1.0 else ():
            x = logits[t]
            logits[t] = x / p.repetition_penalty if x > 0 else x * p.repetition_penalty
        seen = Counter(toks)
        for t, c in seen.items():
            logits[t] -= p.frequency_penalty * c + p.presence_penalty
        for t, b in bias.items():
            logits[t] += b
        toks.append(max(range(len(logits)), key=logits.__getitem__))
    return toks


@pytest.mark.parametrize("mode", MODES)
def test_penalties_and_bias_match_the_reference(llama: torch.nn.Module, mode: str) -> None:
    gen = torch.Generator().manual_seed(5)
    prompts = [rand_prompt(gen, 8 + 3 * i) for i in range(4)]
    params = [
        GenParams(14, frequency_penalty=0.7),
        GenParams(14, presence_penalty=3.0, logit_bias=((3, 2.0), (7, -5.0))),
        greedy(14),  # a plain neighbour keeps its own (static-eligible) tokens
        GenParams(14, frequency_penalty=-0.4, presence_penalty=2.5),
    ]
    eng, _ = make_engine(llama, mode=mode, budget_tokens=512, rows=6)
    run = Run()
    ids = [eng.submit(p, g) for p, g in zip(prompts[:2], params[:2], strict=True)]
    step(eng, run, 3)
    ids += [eng.submit(p, g) for p, g in zip(prompts[2:], params[2:], strict=True)]
    drain(eng, run, ids)
    for i, p, g in zip(ids, prompts, params, strict=True):
        assert run.tokens[i] == _reference(llama, p, g), g


def test_penalties_change_what_greedy_writes(llama: torch.nn.Module) -> None:
    prompt = rand_prompt(torch.Generator().manual_seed(6), 10)
    plain = _reference(llama, prompt, greedy(24))
    eng, _ = make_engine(llama, budget_tokens=256, rows=2)
    i = eng.submit(prompt, GenParams(24, presence_penalty=5.0))
    run = Run()
    drain(eng, run, [i])
    assert len(set(run.tokens[i])) == 24  # a strong presence penalty: no token twice
    assert len(set(plain)) < 24  # ... which plain greedy does repeat (the test can fail)


def test_logit_bias_forbids_and_forces(llama: torch.nn.Module) -> None:
    prompt = rand_prompt(torch.Generator().manual_seed(7), 9)
    plain = _reference(llama, prompt, greedy(8))
    eng, _ = make_engine(llama, budget_tokens=256, rows=3)
    ban = eng.submit(prompt, GenParams(8, logit_bias=((plain[0], -100.0),)))
    force = eng.submit(prompt, GenParams(8, logit_bias=((42, 100.0),)))
    run = Run()
    drain(eng, run, [ban, force])
    assert plain[0] not in run.tokens[ban]
    assert run.tokens[force] == [42] * 8


def test_bias_outside_the_vocabulary_is_refused_at_submit(llama: torch.nn.Module) -> None:
    eng, _ = make_engine(llama, budget_tokens=256, rows=2)
    vocab = llama.config.vocab_size
    with pytest.raises(ValueError, match=rf"outside the vocabulary \(0..{vocab - 1}\).*{vocab}"):
        eng.submit([1, 2, 3], GenParams(4, logit_bias=((vocab, 1.0),)))
    assert not eng.waiting


def test_penalties_on_the_hf_fallback(gpt2: torch.nn.Module) -> None:
    from parafill.backends.engine.engine import EngineConfig
    from parafill.backends.engine.fallback import FallbackEngine

    hf = gpt2
    eng = FallbackEngine(hf, EngineConfig(budget_tokens=128), 128)
    prompt = rand_prompt(torch.Generator().manual_seed(8), 6)
    g = GenParams(10, frequency_penalty=1.1, logit_bias=((5, 1.5),))
    i = eng.submit(prompt, g)
    run = Run()
    drain(eng, run, [i])
    assert run.tokens[i] == _reference(hf, prompt, g)


@pytest.mark.parametrize("mode", MODES)
def test_repetition_penalty_matches_hf_semantics(llama: torch.nn.Module, mode: str) -> None:
    from parafill.fillers import make

    gen = torch.Generator().manual_seed(8)
    prompts = [rand_prompt(gen, 8 + 2 * i) for i in range(3)]
    params = [GenParams(16, repetition_penalty=1.3), GenParams(16, repetition_penalty=2.0),
              GenParams(16, repetition_penalty=1.5, frequency_penalty=0.3)]  # fmt: skip
    eng, _ = make_engine(llama, mode=mode, budget_tokens=512, rows=4, speculate="always")
    ids = [eng.submit(p, g, make("ngram")) for p, g in zip(prompts, params, strict=True)]
    run = Run()
    drain(eng, run, ids)
    for i, p, g in zip(ids, prompts, params, strict=True):
        assert run.tokens[i] == _reference(llama, p, g), g
    plain = _reference(llama, prompts[1], greedy(16))
    assert run.tokens[ids[1]] != plain  # the penalty changed what greedy writes


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("filler", ["autoregressive", "ngram", "jacobi"])
def test_loop_guard_stops_where_the_output_repeats(
    llama: torch.nn.Module, mode: str, filler: str
) -> None:
    from parafill.fillers import make

    gen = torch.Generator().manual_seed(9)
    prompts = [torch.randint(3, 9, (12 + i,), generator=gen).tolist() for i in range(4)]
    eng, _ = make_engine(llama, mode=mode, budget_tokens=1024, rows=4, speculate="always")
    ids = [eng.submit(p, GenParams(60, stop_on_repeat=2), make(filler)) for p in prompts]
    run = Run()
    drain(eng, run, ids)
    stopped = 0
    for i, p in zip(ids, prompts, strict=True):
        plain = _reference(llama, p, greedy(60))
        out = run.tokens[i]
        grams = [tuple(plain[j - 1 : j + 1]) for j in range(1, len(plain))]
        first = next((j + 1 for j, g in enumerate(grams) if g in grams[:j]), None)
        if first is None:
            assert out == plain and run.finish[i] == "length"
        else:  # the plain output up to and including the first repeated bigram
            assert out == plain[: first + 1] and run.finish[i] == "stop"
            stopped += 1
    assert stopped >= 2  # the random-weight model loops on these prompts
