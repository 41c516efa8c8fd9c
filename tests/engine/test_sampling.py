"""Seeded sampling: reproducible, independent of what shares the step, inside the top-p nucleus.

A seeded request owns its generator, so its draws depend only on its own logits; those are
the same (fp32) whether it decodes alone or packed with others, in rows or tree mode.
"""

from __future__ import annotations

import pytest
import torch
from engine_ref import RefCache, Run, drain, greedy, hf_logits, make_engine, rand_prompt, step

from parafill.backends.engine.sampling import GenParams

N = 24
SEEDED = GenParams(max_tokens=N, temperature=0.8, top_p=0.9, seed=123)


@pytest.fixture(scope="module")
def llama(tiny_models: dict[str, torch.nn.Module]) -> torch.nn.Module:
    return tiny_models["llama"]


@pytest.fixture(scope="module")
def prompt() -> list[int]:
    return rand_prompt(torch.Generator().manual_seed(11), 12)


def _alone(hf: torch.nn.Module, prompt: list[int], params: GenParams, mode: str = "rows"
           ) -> list[int]:
    eng, _ = make_engine(hf, mode=mode, budget_tokens=512, rows=4)
    i = eng.submit(prompt, params)
    run = Run()
    drain(eng, run, [i])
    return run.tokens[i]


@pytest.fixture(scope="module")
def seeded_alone(llama: torch.nn.Module, prompt: list[int]) -> list[int]:
    return _alone(llama, prompt, SEEDED)


def test_same_seed_same_tokens(llama: torch.nn.Module, prompt: list[int],
                               seeded_alone: list[int]) -> None:
    assert len(seeded_alone) == N
    assert _alone(llama, prompt, SEEDED) == seeded_alone
    assert _alone(llama, prompt, SEEDED, mode="tree") == seeded_alone
    assert _alone(llama, prompt, SEEDED, mode="tree-static") == seeded_alone


def test_different_seeds_differ(llama: torch.nn.Module, prompt: list[int],
                                seeded_alone: list[int]) -> None:
    others = [_alone(llama, prompt, GenParams(N, 0.8, 0.9, seed)) for seed in (124, 7)]
    assert all(o != seeded_alone for o in others)


@pytest.mark.parametrize("mode", ["rows", "tree", "rows-static", "tree-static"])
def test_seeded_tokens_do_not_depend_on_step_mates(
    llama: torch.nn.Module, prompt: list[int], seeded_alone: list[int], mode: str
) -> None:
    gen = torch.Generator().manual_seed(12)
    eng, _ = make_engine(llama, mode=mode, budget_tokens=512, rows=6)
    run = Run()
    early = [eng.submit(rand_prompt(gen, 9), greedy(7)),
             eng.submit(rand_prompt(gen, 5), GenParams(30, 1.0, 0.95, seed=9))]
    step(eng, run, 2)
    mine = eng.submit(prompt, SEEDED)
    twin = eng.submit(prompt, GenParams(N, 0.8, 0.9, seed=5))  # same prompt, other seed
    step(eng, run, 3)
    late = [eng.submit(prompt[:6] + rand_prompt(gen, 4), GenParams(10, 0.7, 1.0, seed=1))]
    drain(eng, run, [*early, mine, twin, *late])
    assert run.tokens[mine] == seeded_alone
    assert run.tokens[twin] != seeded_alone


def test_sampled_tokens_lie_in_the_reference_nucleus(
    llama: torch.nn.Module, prompt: list[int], seeded_alone: list[int]
) -> None:
    logits = hf_logits(llama, prompt + seeded_alone)[len(prompt) - 1 : -1]  # (N, V)
    probs = torch.softmax(logits / SEEDED.temperature, dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    rank = (order == torch.tensor(seeded_alone)[:, None]).float().argmax(dim=-1)  # (N,)
    mass_before = (sorted_p.cumsum(-1) - sorted_p).gather(1, rank[:, None])[:, 0]
    assert bool((mass_before < SEEDED.top_p).all()), mass_before
    assert len(set(seeded_alone)) > 1 and bool((rank > 0).any())  # it did sample, not argmax


def test_tiny_top_p_is_greedy(llama: torch.nn.Module, prompt: list[int],
                              tiny_refs: dict[str, RefCache]) -> None:
    got = _alone(llama, prompt, GenParams(N, temperature=0.8, top_p=1e-6, seed=3))
    assert got == tiny_refs["llama"](prompt, N)
