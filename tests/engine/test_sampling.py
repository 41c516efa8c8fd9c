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


# ---- the batched sampler itself (sampling.pick / select_rows) -----------------------------

from parafill.backends.engine.sampling import pick, select_rows, uniforms  # noqa: E402


def test_uniforms_are_uniform_and_keyed_by_seed_and_draw() -> None:
    n = 40000
    u = uniforms(torch.full((n,), 77), torch.arange(n))
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    counts = torch.histc(u, bins=20, min=0.0, max=1.0)
    chi2 = float(((counts - n / 20) ** 2 / (n / 20)).sum())
    assert chi2 < 45.0, chi2  # 19 degrees of freedom: p < 0.001 above ~43.8
    assert torch.equal(u, uniforms(torch.full((n,), 77), torch.arange(n)))  # reproducible
    other_seed = uniforms(torch.full((n,), 78), torch.arange(n))
    assert float((u == other_seed).float().mean()) < 0.01
    big = uniforms(torch.tensor([-(2**63), 2**63 - 1, 1 << 40]), torch.tensor([0, 0, 0]))
    assert len(set(big.tolist())) == 3  # the seed's high word counts too


def _frequencies(tokens: list[int], v: int) -> torch.Tensor:
    return torch.bincount(torch.tensor(tokens), minlength=v).float() / len(tokens)


@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_draws_follow_the_tempered_truncated_distribution(top_p: float) -> None:
    logits = torch.tensor([2.0, 1.5, 0.3, 0.0, -1.0, -3.0])
    temp, n = 0.7, 30000
    probs = torch.softmax(logits / temp, dim=-1)
    sorted_p, order = probs.sort(descending=True)
    keep = (sorted_p.cumsum(0) - sorted_p) < top_p
    want = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
    want /= want.sum()
    rows = logits.expand(n, -1)
    params = [GenParams(1, temp, top_p, seed=5)] * n
    eager = pick(rows, params, [5] * n, list(range(n)))
    graph = select_rows(
        rows, torch.full((n,), temp), torch.full((n,), top_p), torch.full((n,), 5),
        torch.arange(n), nucleus=top_p < 1.0,
    ).tolist()
    assert eager == graph
    got = _frequencies(eager, len(logits))
    assert float((got - want).abs().max()) < 0.012, (got, want)
    assert float(got[want == 0].sum()) == 0.0  # nothing outside the nucleus


@pytest.mark.parametrize("scales", [(8.0, 0.3), (8.0, 2.0), (8.0, 0.3, 2.0)])
def test_eager_and_capturable_samplers_agree_on_real_vocab_sizes(
    scales: tuple[float, ...],
) -> None:
    """Peaked rows (nucleus of a few tokens: the top-256 stage), medium ones (hundreds: the
    top-k bound stage) and flat ones (thousands: the full sort) give the same tokens in the
    eager and the capturable sampler."""
    gen = torch.Generator().manual_seed(0)
    m, v = 12, 5000
    scale = torch.tensor([scales[i % len(scales)] for i in range(m)])
    logits = torch.randn(m, v, generator=gen) * scale[:, None]
    params = [
        GenParams(1, t, p, seed=s)
        for t, p, s in [(0.0, 1.0, 1), (0.8, 0.95, 2), (1.0, 1.0, 3), (0.5, 0.9, 4),
                        (1.3, 0.99, 5), (0.0, 0.5, 6), (0.9, 1.0, 7), (0.6, 0.5, 8),
                        (1.0, 0.999, 9), (0.2, 0.7, 10), (1.0, 1e-6, 11), (2.0, 0.97, 12)]
    ]
    seeds, draws = [p.seed or 0 for p in params], [3 * i for i in range(m)]
    eager = pick(logits, params, seeds, draws)
    graph = select_rows(
        logits,
        torch.tensor([p.temperature for p in params]),
        torch.tensor([p.top_p for p in params]),
        torch.tensor(seeds),
        torch.tensor(draws),
        nucleus=True,
    ).tolist()
    assert eager == graph
    argmax = logits.argmax(dim=-1).tolist()
    assert [eager[i] for i in (0, 5, 10)] == [argmax[i] for i in (0, 5, 10)]  # greedy / tiny p
    assert sum(e != a for e, a in zip(eager, argmax, strict=True)) >= 3  # the others sampled
