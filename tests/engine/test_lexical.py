"""Lexical acceptance (`Decoding.lexical`, lossy, off by default) on the embedded SmolLM2: a
drafted token the model gives at least the threshold is kept where greedy decoding would choose
another. Every emitted token is then either the greedy choice or such a token (read back from
the HF reference, teacher-forced), and some outputs do differ from greedy (the number of
forwards is not compared: the answers then go different ways); out-of-range thresholds and
sampled requests are refused at submit."""

from __future__ import annotations

import pytest
import torch
from engine_ref import Chat, Run, Smol, drain, make_engine

from parafill.backends.engine.sampling import GenParams
from parafill.fillers import make

N = 48
TAU = 0.3
QUESTIONS = [
    "Repeat after me: the quick brown fox jumps over the lazy dog, twice.",
    "Write a short poem about the sea.",
    "List the days of the week, then the months of the year.",
]


def _decode(smol: Smol, chat: Chat, filler: str, lexical: float) -> list[list[int]]:
    eng, _ = make_engine(smol[0], mode="rows", budget_tokens=2048, rows=4, speculate="always")
    eos = frozenset({int(smol[1].eos_token_id)})
    params = GenParams(N, eos_ids=eos, lexical=lexical)
    ids = [eng.submit(chat(q), params, make(filler)) for q in QUESTIONS]
    run = Run()
    drain(eng, run, ids, 1000)
    return [run.tokens[i] for i in ids]


@torch.inference_mode()
def _probs(hf: torch.nn.Module, prompt: list[int], out: list[int]) -> torch.Tensor:
    """p(· | prompt + out[:i]) for every output position i (the HF reference, fp32)."""
    logits = hf(torch.tensor([prompt + out])).logits[0, len(prompt) - 1 : -1]
    return torch.softmax(logits.float(), dim=-1)


@pytest.mark.parametrize("filler", ["ngram", "jacobi"])
def test_every_token_is_the_greedy_choice_or_a_confident_draft(
    smol: Smol, chat: Chat, filler: str
) -> None:
    exact = _decode(smol, chat, filler, 0.0)
    lossy = _decode(smol, chat, filler, TAU)
    lenient = 0
    for q, out in zip(QUESTIONS, lossy, strict=True):
        probs = _probs(smol[0], chat(q), out)
        for i, tok in enumerate(out):
            greedy = int(probs[i].argmax())
            if tok != greedy:
                assert probs[i, tok] >= TAU - 1e-4, (q, i, float(probs[i, tok]))
                lenient += 1
    assert lenient > 0  # the threshold did keep drafts greedy decoding would not
    assert lossy != exact


def test_bad_thresholds_and_sampled_requests_are_refused(smol: Smol, chat: Chat) -> None:
    eng, _ = make_engine(smol[0], mode="rows", budget_tokens=512, rows=2)
    prompt = chat("Hi")
    for bad in (0.5, 0.9, -0.1, 2.0):
        with pytest.raises(ValueError, match=r"lexical must be in \[0, 0.5\)"):
            eng.submit(prompt, GenParams(8, lexical=bad), make("ngram"))
    with pytest.raises(ValueError, match="greedy decoding"):
        eng.submit(prompt, GenParams(8, temperature=0.7, lexical=0.3), make("ngram"))
