"""The engine against the slow reference (HF forward, one prompt at a time), fp32 on CPU.

Logits of the compact forward, greedy tokens in rows and tree mode, shared prefixes (prefilled
once, then forked), and requests that join, finish, and are cancelled while others decode.
"""

from __future__ import annotations

import os

import pytest
import torch
from engine_ref import (
    TINY_KINDS,
    Chat,
    RefCache,
    Run,
    Smol,
    drain,
    greedy,
    hf_logits,
    make_engine,
    rand_prompt,
    step,
)

from parafill.backends.engine.model import CompactLM, StepInput
from parafill.backends.engine.sampling import GenParams

MODES = ["rows", "tree"]
ALL_MODES = [*MODES, "rows-static", "tree-static"]  # + static-shape decode steps
ATOL = 1e-4


def _long(xs: list[int]) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.long)


def _caches(lm: CompactLM, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    s = lm.shapes
    k = torch.zeros(s.layers, rows, s.kv_heads, cols, s.head_dim)
    return k, torch.zeros_like(k)


def _packed(prompts: list[list[int]], tree: bool) -> StepInput:
    """All prompts in one forward: one row each, or packed side by side in one row."""
    tokens, pos, rows, cols, qslots, owner = [], [], [], [], [], []
    for i, p in enumerate(prompts):
        n = len(p)
        start = len(tokens) if tree else 0
        tokens += p
        pos += range(n)
        rows += [0 if tree else i] * n
        cols += range(start, start + n)
        qslots += range(start, start + n)
        owner += [i] * n
    r, q = (1, len(tokens)) if tree else (len(prompts), max(map(len, prompts)))
    mask = torch.zeros(r, q, q, dtype=torch.bool)
    mask[:, :, 0] = True  # padded queries attend somewhere; real ones are set below
    mask[_long(rows), _long(qslots)] = False
    for j in range(len(tokens)):
        for k in range(len(tokens)):
            if owner[j] == owner[k] and pos[k] <= pos[j]:
                mask[rows[j], qslots[j], cols[k]] = True
    everything = list(range(len(tokens)))
    return StepInput(
        *map(_long, (tokens, pos, rows, cols, qslots)), mask[:, None], _long(everything)
    )


@pytest.mark.parametrize("kind", list(TINY_KINDS))
def test_logits_match_hf_tiny(kind: str, tiny_models: dict[str, torch.nn.Module]) -> None:
    hf = tiny_models[kind]
    prompt = rand_prompt(torch.Generator().manual_seed(1), 23)
    lm = CompactLM(hf, 512)
    got = lm.forward(_packed([prompt], tree=False), *_caches(lm, 1, 23))
    torch.testing.assert_close(got, hf_logits(hf, prompt), atol=ATOL, rtol=0)


def test_logits_match_hf_smollm2(smol: Smol, chat: Chat) -> None:
    hf = smol[0]
    prompt = chat("Name three colours.")
    lm = CompactLM(hf, 512)
    got = lm.forward(_packed([prompt], tree=False), *_caches(lm, 1, len(prompt)))
    # 30 layers of fp32 matmuls summed in oneDNN's order vs MKL's (HF): logits of magnitude
    # ~15 differ by up to ~1.2e-4 (1e-5 relative); greedy tokens are compared exactly elsewhere
    torch.testing.assert_close(got, hf_logits(hf, prompt), atol=3e-4, rtol=0)


@pytest.mark.parametrize("tree", [False, True], ids=["rows", "tree"])
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_packed_logits_match_each_alone(
    kind: str, tree: bool, tiny_models: dict[str, torch.nn.Module]
) -> None:
    """Three prompts in one forward (padded rows, or one row with a block mask)."""
    hf = tiny_models[kind]
    gen = torch.Generator().manual_seed(2)
    prompts = [rand_prompt(gen, n) for n in (9, 4, 13)]
    lm = CompactLM(hf, 512)
    width = sum(map(len, prompts)) if tree else max(map(len, prompts))
    got = lm.forward(_packed(prompts, tree), *_caches(lm, 1 if tree else 3, width))
    want = torch.cat([hf_logits(hf, p) for p in prompts])
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def _shared_prompts(seed: int) -> tuple[list[int], list[list[int]], list[int]]:
    """(common prefix, prompts extending it with distinct tails, an unrelated prompt)."""
    gen = torch.Generator().manual_seed(seed)
    common = rand_prompt(gen, 24)
    firsts = torch.randperm(200, generator=gen)[:3].add(3).tolist()  # distinct first tail tokens
    tails = [[f, *rand_prompt(gen, n)] for f, n in zip(firsts, (4, 0, 6), strict=True)]
    return common, [common + t for t in tails], rand_prompt(gen, 10)


@pytest.mark.parametrize("mode", ALL_MODES)
@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral"])
def test_greedy_shared_prefix_tiny(
    kind: str,
    mode: str,
    tiny_models: dict[str, torch.nn.Module],
    tiny_refs: dict[str, RefCache],
) -> None:
    common, shared, other = _shared_prompts(3)
    prompts = [other, *shared]
    lengths = [7, 11, 5, 9]
    eng, lm = make_engine(tiny_models[kind], mode=mode, budget_tokens=512, rows=8)
    ids = [eng.submit(p, greedy(n)) for p, n in zip(prompts, lengths, strict=True)]
    run = Run()
    drain(eng, run, ids)
    for i, p, n in zip(ids, prompts, lengths, strict=True):
        assert run.tokens[i] == tiny_refs[kind](p, n), f"request {i}"
        assert run.finish[i] == "length"
    if mode.endswith("static"):
        return  # static steps feed padding lanes too: prefill counts are checked eagerly
    # the common prefix was prefilled once, not once per request
    c = len(common)
    assert len(other) + lengths[0] <= c  # all of `other`'s positions are below c as well
    assert lm.fed_where(lambda _t, pos: pos < c) == c + len(other) + lengths[0] - 1
    prefill = lm.fed - sum(n - 1 for n in lengths)
    assert prefill == sum(map(len, prompts)) - (len(shared) - 1) * c


@pytest.mark.parametrize("mode", MODES)
def test_greedy_shared_system_prompt_smollm2(
    mode: str, smol: Smol, chat: Chat, smol_ref: RefCache
) -> None:
    system = "You are a concise assistant. Answer in one short sentence, plainly."
    questions = ["What is the capital of France?", "Why is the sky blue?", "What is 2+2?"]
    prompts = [chat(q, system) for q in questions]
    lengths = [10, 6, 8]
    eng, lm = make_engine(smol[0], mode=mode, budget_tokens=1024, rows=4)
    ids = [eng.submit(p, greedy(n)) for p, n in zip(prompts, lengths, strict=True)]
    run = Run()
    drain(eng, run, ids)
    for i, p, n in zip(ids, prompts, lengths, strict=True):
        assert run.tokens[i] == smol_ref(p, n)
    prefill = lm.fed - sum(n - 1 for n in lengths)
    c = len(os.path.commonprefix(prompts))  # the template and system prompt
    assert c > 20
    assert prefill <= sum(map(len, prompts)) - (len(prompts) - 1) * c


@pytest.mark.parametrize("mode", ALL_MODES)
def test_late_request_forks_from_a_running_sequence(
    mode: str, tiny_models: dict[str, torch.nn.Module], tiny_refs: dict[str, RefCache]
) -> None:
    """B shares A's prompt prefix; C shares A's prompt and 3 of its generated tokens."""
    ref = tiny_refs["llama"]
    gen = torch.Generator().manual_seed(4)
    a = rand_prompt(gen, 30)
    a_out = ref(a, 12)
    b = a[:20] + [a[20] % 200 + 3, *rand_prompt(gen, 3)]
    c = a + a_out[:3] + [a_out[3] % 200 + 3, *rand_prompt(gen, 2)]
    eng, lm = make_engine(tiny_models["llama"], mode=mode, budget_tokens=512, rows=4)
    run = Run()
    ia = eng.submit(a, greedy(12))
    step(eng, run, 6)  # A is decoding: its prompt and first 5 tokens are written
    ib, ic = eng.submit(b, greedy(8)), eng.submit(c, greedy(9))
    drain(eng, run, [ia, ib, ic])
    assert run.tokens[ia] == a_out
    assert run.tokens[ib] == ref(b, 8)
    assert run.tokens[ic] == ref(c, 9)
    if mode.endswith("static"):
        assert eng.decoder is not None and eng.decoder.replays > 0
        return
    prefill = lm.fed - (11 + 7 + 8)
    assert prefill <= len(a) + (len(b) - 20) + (len(c) - len(a) - 3)


@pytest.mark.parametrize("chunk", [512, 8])
@pytest.mark.parametrize("mode", ALL_MODES)
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_admission_retirement_and_cancel_mix(
    kind: str,
    mode: str,
    chunk: int,
    tiny_models: dict[str, torch.nn.Module],
    tiny_refs: dict[str, RefCache],
) -> None:
    ref = tiny_refs[kind]
    common, shared, other = _shared_prompts(5)
    gen = torch.Generator().manual_seed(6)
    p7 = common + rand_prompt(gen, 9)
    prompts = {
        "p1": shared[0],
        "p2": other,
        "p3": shared[2],
        "p4": rand_prompt(gen, 17),
        "p5": shared[1],
        "p6": list(other),
        "p7": p7,
        "p8": p7[:28],
    }
    lengths = {"p1": 14, "p2": 3, "p3": 8, "p4": 10, "p5": 12, "p6": 5, "p7": 4, "p8": 6}
    eng, lm = make_engine(
        tiny_models[kind], mode=mode, budget_tokens=1024, rows=8, prefill_chunk=chunk
    )
    run, ids = Run(), {}

    def submit(*names: str) -> None:
        ids.update({n: eng.submit(prompts[n], greedy(lengths[n])) for n in names})

    submit("p1", "p2", "p3")
    step(eng, run, 2)
    submit("p4", "p5", "p6")
    step(eng, run, 3)
    eng.cancel(ids["p5"])
    step(eng, run)
    submit("p7", "p8")
    drain(eng, run, list(ids.values()))

    assert run.finish[ids["p5"]] == "cancelled"
    got5 = run.tokens.get(ids["p5"], [])
    assert got5 == ref(prompts["p5"], lengths["p5"])[: len(got5)]
    for name, i in ids.items():
        if name != "p5":
            assert run.tokens[i] == ref(prompts[name], lengths[name]), name
            assert run.finish[i] == "length", name
    if chunk == 8:  # chunked prefill: never more than the chunk of prompt tokens in a step
        assert max(s.tokens.numel() for s in lm.steps) <= 8 + len(prompts)
    eng.drop_cached()  # retained prefixes hold columns until evicted
    assert int(eng.cache.refs.sum()) == 0  # every KV column returned
    assert sorted(eng.free_slots) == list(range(eng.vis.shape[0] - 1))  # last: padding lanes
    assert (eng.decoder is not None) == mode.endswith("static")
    if eng.decoder is not None:
        assert eng.decoder.replays > 0


@pytest.mark.parametrize("mode", ALL_MODES)
def test_cancelling_several_at_once(
    mode: str, tiny_models: dict[str, torch.nn.Module], tiny_refs: dict[str, RefCache]
) -> None:
    gen = torch.Generator().manual_seed(7)
    prompts = [rand_prompt(gen, 6 + i) for i in range(4)]
    eng, _ = make_engine(tiny_models["llama"], mode=mode, budget_tokens=512, rows=4)
    ids = [eng.submit(p, greedy(10)) for p in prompts]
    run = Run()
    step(eng, run, 3)
    eng.cancel(ids[1])
    eng.cancel(ids[2])  # adjacent in the engine's live list
    drain(eng, run, ids)
    assert [run.finish[i] for i in ids] == ["length", "cancelled", "cancelled", "length"]
    for i, p in zip(ids, prompts, strict=True):
        want = tiny_refs["llama"](p, 10)
        assert run.tokens[i] == want[: len(run.tokens[i])]
    assert len(run.tokens[ids[1]]) == len(run.tokens[ids[2]]) == 3
    eng.drop_cached()  # retained prefixes hold columns until evicted
    assert int(eng.cache.refs.sum()) == 0


@pytest.mark.parametrize("mode", ALL_MODES)
def test_eos_stops_without_emitting_it(
    mode: str, tiny_models: dict[str, torch.nn.Module], tiny_refs: dict[str, RefCache]
) -> None:
    gen = torch.Generator().manual_seed(8)
    prompt = rand_prompt(gen, 12)
    want = tiny_refs["llama"](prompt, 12)
    k = next(i for i in range(3, 12) if want[i] not in want[:i])  # first fresh token ≥ 3
    eng, _ = make_engine(tiny_models["llama"], mode=mode, budget_tokens=256, rows=2)
    i = eng.submit(prompt, GenParams(max_tokens=12, eos_ids=frozenset({want[k]})))
    run = Run()
    drain(eng, run, [i])
    assert run.tokens[i] == want[:k]
    assert run.finish[i] == "stop"


def test_reference_loop_matches_hf_generate(smol: Smol, chat: Chat, smol_ref: RefCache) -> None:
    """The hand-written reference agrees with HF generate (explicit mask: pad == eos here)."""
    hf, tok = smol
    prompt = chat("List two fruits.")
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        out = hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=8,
            min_new_tokens=8,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=None,
        )
    assert out[0, len(prompt) :].tolist() == smol_ref(prompt, 8)


def test_compiled_static_decode_on_cpu_equals_the_reference(
    llama: torch.nn.Module, ref: RefCache
) -> None:
    """Was broken: under torch.compile the fp32 projections called oneDNN's private op, which
    inductor cannot lower, and every request of a compile=True engine ended in an error. (With
    ordered attention, the CPU default, the static step is not compiled: its kernels are one
    call per layer already; torch's attention is what compiling is for.)"""
    eng, _ = make_engine(
        llama, mode="rows-static", budget_tokens=256, rows=2, compile=True, attention="native"
    )
    prompts = [[1, 5, 9, 12], [3, 4, 200, 17, 6]]
    ids = [eng.submit(p, greedy(12)) for p in prompts]
    run = Run()
    drain(eng, run, ids)
    assert [run.tokens[i] for i in ids] == [ref(p, 12) for p in prompts]
    assert eng.decoder is not None and eng.decoder.replays > 0
