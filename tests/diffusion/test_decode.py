"""The decoder against the slow reference, its cache modes, batching, EOS and retirement."""

from __future__ import annotations

import pytest
import torch
from diffusion_ref import Reference, reference_generate

from parafill.diffusion import DiffusionLM
from parafill.diffusion.unmask import choose

PROMPTS = (
    [5, 6, 7],
    [9, 10, 11, 12, 13, 14, 15, 16, 17, 18],
    [40],
    [20, 21, 22, 23, 24, 25, 26, 27],
)


@pytest.mark.parametrize("kind", ["qwen", "llada"])
@pytest.mark.parametrize(("block", "max_tokens"), [(4, 11), (8, 8), (3, 7)])
def test_one_token_per_step_is_llada_low_confidence_sampler(
    models: dict[str, DiffusionLM],
    refs: dict[str, Reference],
    kind: str,
    block: int,
    max_tokens: int,
) -> None:
    """tau = 1 (one token per step), no cache: token for token and forward for forward the
    reference's full-recompute low-confidence remasking."""
    for prompt in PROMPTS:
        out = models[kind].generate([prompt], max_tokens, block=block, threshold=1.0, eos=())
        tokens, forwards = reference_generate(refs[kind], prompt, max_tokens, block)
        assert list(out.results[0].tokens) == tokens
        assert out.results[0].forwards == forwards
        assert out.results[0].finish == "length"


@pytest.mark.parametrize("kind", ["qwen", "qwen_peaked"])
@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("threshold", [1.0, 0.7])
def test_block_diffusion_cache_is_exact(
    models: dict[str, DiffusionLM], kind: str, cache: str, threshold: float
) -> None:
    """Block-causal attention: keys before the current block never change once their block is
    done, so the prefix cache (refreshed at each block's first step) is exact; dual = prefix
    (the model never attends later blocks)."""
    model = models[kind]
    for prompt in PROMPTS:
        kw = {"block": 4, "threshold": threshold, "eos": ()}
        full = model.generate([prompt], 13, cache="none", **kw).results
        cached = model.generate([prompt], 13, cache=cache, **kw).results
        assert cached == full


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_llada_cache_exact_case(models: dict[str, DiffusionLM], cache: str) -> None:
    """LLaDA attends everything both ways, so cached keys go stale as a block fills in: the
    prefix and dual caches are approximations (Fast-dLLM's). They are exact when each block
    is decided in its first step, which recomputes the whole sequence (a threshold below
    every confidence): then every mode gives the same tokens in one forward per block."""
    model = models["llada"]
    for prompt in PROMPTS:
        kw = {"block": 4, "threshold": 1e-9, "eos": ()}
        full = model.generate([prompt], 12, cache="none", **kw).results[0]
        cached = model.generate([prompt], 12, cache=cache, **kw).results[0]
        assert cached == full
        assert full.forwards == 3 and full.decoded == 12


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("block", [4, 8])
def test_llada_cache_is_fast_dllm_approximation(
    models: dict[str, DiffusionLM], refs: dict[str, Reference], cache: str, block: int
) -> None:
    """One token per step with the prefix / dual cache: the same tokens and forwards as the
    reference's Fast-dLLM cache (keys and values kept from each block's first, full forward
    and read outside the recomputed window)."""
    for prompt in PROMPTS:
        out = models["llada"].generate(
            [prompt], 12, block=block, threshold=1.0, cache=cache, eos=()
        )
        tokens, forwards = reference_generate(refs["llada"], prompt, 12, block, cache=cache)
        assert (list(out.results[0].tokens), out.results[0].forwards) == (tokens, forwards)


def test_llada_prefix_cache_reads_stale_keys(models: dict[str, DiffusionLM]) -> None:
    """One token per step: the cached run must differ somewhere from full recompute on these
    prompts, or the cached path would not be reusing anything."""
    model = models["llada"]
    kw = {"block": 4, "threshold": 1.0, "eos": ()}
    full = model.generate(list(PROMPTS), 12, cache="none", **kw).results
    cached = model.generate(list(PROMPTS), 12, cache="prefix", **kw).results
    assert [r.tokens for r in cached] != [r.tokens for r in full]


@pytest.mark.parametrize("kind", ["qwen", "llada", "qwen_peaked", "llada_peaked"])
@pytest.mark.parametrize(
    "options",
    [
        {"threshold": 1.0, "cache": "none"},
        {"threshold": 0.7, "cache": "prefix"},
        {"threshold": 0.9, "cache": "dual"},
        {"factor": 1.0, "cache": "dual"},
    ],
)
def test_batched_equals_each_row_alone(
    models: dict[str, DiffusionLM], kind: str, options: dict[str, object]
) -> None:
    model = models[kind]
    kw = {"block": 4, "eos": (), **options}
    batched = model.generate(list(PROMPTS), 10, **kw)
    alone = [model.generate([p], 10, **kw).results[0] for p in PROMPTS]
    assert list(batched.results) == alone
    assert batched.forwards == max(r.forwards for r in alone)


def test_peaked_model_reveals_many_tokens_per_step(models: dict[str, DiffusionLM]) -> None:
    for kind in ("qwen_peaked", "llada_peaked"):
        one = models[kind].generate(list(PROMPTS), 16, block=8, threshold=1.0, eos=())
        many = models[kind].generate(list(PROMPTS), 16, block=8, threshold=0.7, eos=())
        assert all(r.forwards >= 16 for r in one.results)
        assert many.tokens_per_forward > 1.5 * one.tokens_per_forward


@pytest.mark.parametrize("kind", ["qwen", "llada"])
def test_eos_stops_the_row(
    models: dict[str, DiffusionLM], refs: dict[str, Reference], kind: str
) -> None:
    """EOS ends a row as soon as it and everything before it are decided; later positions
    are dropped. The same as the reference with the same rule, and the no-EOS run cut."""
    model, prompt = models[kind], [9, 10, 11, 12, 13]
    free = model.generate([prompt], 16, block=4, threshold=1.0, eos=()).results[0]
    eos = free.tokens[5]
    cut = list(free.tokens[: free.tokens.index(eos)])
    got = model.generate([prompt], 16, block=4, threshold=1.0, eos=(eos,)).results[0]
    assert list(got.tokens) == cut
    assert got.finish == "eos"
    assert got.forwards < free.forwards
    tokens, forwards = reference_generate(refs[kind], prompt, 16, 4, eos=(eos,))
    assert (list(got.tokens), got.forwards) == (tokens, forwards)


@pytest.mark.parametrize("kind", ["qwen", "llada"])
def test_finished_row_retires_and_others_are_unaffected(
    models: dict[str, DiffusionLM], kind: str
) -> None:
    model = models[kind]
    short, long = [9, 10, 11, 12, 13], [30, 31, 32]
    eos = model.generate([short], 16, block=4, threshold=1.0, eos=()).results[0].tokens[1]
    kw = {"block": 4, "threshold": 1.0, "eos": (eos,)}
    alone = [model.generate([p], 16, **kw).results[0] for p in (short, long)]
    assert alone[0].finish == "eos" and alone[0].forwards < alone[1].forwards
    both = model.generate([short, long], 16, **kw)
    assert list(both.results) == alone
    assert both.batch_sizes[: alone[0].forwards] == (2,) * alone[0].forwards
    assert set(both.batch_sizes[alone[0].forwards :]) == {1}
    assert both.forwards == alone[1].forwards


@pytest.mark.parametrize("kind", ["qwen_peaked", "llada"])
def test_waiting_rows_are_admitted_as_rows_retire(
    models: dict[str, DiffusionLM], kind: str
) -> None:
    """Six prompts, at most two rows in flight: each waiting prompt joins the step after a
    row leaves, and every row decodes exactly as it does alone."""
    model = models[kind]
    prompts = [list(p) for p in PROMPTS] + [[50, 51], [60, 61, 62, 63, 64, 65]]
    kw = {"block": 4, "threshold": 0.8, "cache": "prefix", "eos": ()}
    got = model.generate(prompts, 9, max_batch=2, **kw)
    want = [model.generate([p], 9, **kw).results[0] for p in prompts]
    assert list(got.results) == want
    assert max(got.batch_sizes) == 2
    assert sum(got.batch_sizes) == sum(r.forwards for r in want)  # no row idles in a forward
    assert got.forwards < sum(r.forwards for r in want)


def _loop_threshold(conf: list[float], masked: list[bool], tau: float) -> list[bool]:
    best = max((c, -i) for i, c in enumerate(conf) if masked[i])
    return [
        m and (c >= tau or -best[1] == i) for i, (c, m) in enumerate(zip(conf, masked, strict=True))
    ]


def _loop_factor(conf: list[float], masked: list[bool], factor: float) -> list[bool]:
    order = sorted((i for i in range(len(conf)) if masked[i]), key=lambda i: (-conf[i], i))
    take = 1
    while take < len(order) and conf[order[take]] >= 1 - factor / (take + 2):
        take += 1
    chosen = set(order[:take])
    return [i in chosen for i in range(len(conf))]


def test_reveal_rules_match_loops() -> None:
    gen = torch.Generator().manual_seed(0)
    for trial in range(60):
        logits = torch.randn(3, 6, 5, generator=gen) * (1 + trial % 7)
        masked = torch.rand(3, 6, generator=gen) < 0.7
        masked[:, trial % 6] = True
        conf = torch.softmax(logits.double(), -1).max(-1).values
        for tau in (0.3, 0.6, 0.9, 1.0):
            _, reveal = choose(logits, masked, tau, None)
            for r in range(3):
                want = _loop_threshold(
                    conf[r].tolist(), masked[r].tolist(), tau if tau < 1 else 2.0
                )
                assert reveal[r].tolist() == want
        for factor in (0.5, 1.0, 2.0):
            _, reveal = choose(logits, masked, 0.9, factor)
            for r in range(3):
                assert reveal[r].tolist() == _loop_factor(
                    conf[r].tolist(), masked[r].tolist(), factor
                )
