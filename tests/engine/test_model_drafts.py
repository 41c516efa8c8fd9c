"""Model drafters (fillers `self` and `draft`) against plain decoding (fp32, CPU): greedy
output token-exact in every packing mode with joins, cancels and shared prefixes; a drafter
identical to the target has its drafts kept (its cache and masks are right); sampled drafts
follow the target's distribution (rejection sampling with q) and repeat with a seed; bad
set-ups are refused; the self-drafter's calibration."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from engine_ref import Chat, RefCache, Run, Smol, drain, greedy, hf_logits, make_engine, step, tiny

from parafill.backends.engine.engine import Engine, EngineConfig
from parafill.backends.engine.model import CompactLM, StepInput
from parafill.backends.engine.sampling import GenParams
from parafill.backends.engine.selfspec import (
    _scratch,
    agreement,
    calibrate,
    influence,
    layers_for,
    matches,
    speedup,
)
from parafill.fillers import make

MODES = ["rows", "tree", "rows-static", "tree-static"]


def _prompts(gen: torch.Generator) -> list[list[int]]:
    base = torch.randint(3, 200, (20,), generator=gen).tolist()
    shared = [base + torch.randint(3, 200, (3 + i,), generator=gen).tolist() for i in range(3)]
    return shared + [torch.randint(3, 200, (9 + 2 * i,), generator=gen).tolist() for i in range(4)]


def _run(
    eng: Engine, filler: str, prompts: list[list[int]], lengths: list[int]
) -> tuple[Run, list[int]]:
    run, ids = Run(), []
    for j in range(3):
        ids.append(eng.submit(prompts[j], greedy(lengths[j]), make(filler)))
    step(eng, run, 3)
    for j in range(3, 6):
        ids.append(eng.submit(prompts[j], greedy(lengths[j]), make(filler)))
    step(eng, run, 2)
    eng.cancel(ids[4])
    step(eng, run)
    ids.append(eng.submit(prompts[6], greedy(lengths[6]), make(filler)))
    drain(eng, run, ids)
    return run, ids


def _check(
    run: Run, ids: list[int], prompts: list[list[int]], lengths: list[int], ref: RefCache
) -> None:
    for j, i in enumerate(ids):
        want = ref(prompts[j], lengths[j])
        got = run.tokens.get(i, [])
        if j == 4:
            assert run.finish[i] == "cancelled" and got == want[: len(got)]
        else:
            assert got == want, j


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("setup", ["self", "self-int4", "self-all", "draft", "draft-same"])
def test_greedy_model_drafts_equal_plain_decoding(
    setup: str, mode: str, llama: torch.nn.Module, ref: RefCache
) -> None:
    prompts, lengths = _prompts(torch.Generator().manual_seed(5)), [17, 9, 24, 13, 30, 6, 21]
    layers = {"self": (0, 2), "self-int4": (0, 1, 2), "self-all": (0, 1, 2)}.get(setup)
    weights = "auto" if setup == "self-int4" else "target"  # auto: an int4 copy drafts
    eng, _ = make_engine(
        llama, mode=mode, budget_tokens=1024, rows=8, prefill_chunk=24, speculate="always",
        self_layers=layers, self_weights=weights,
    )  # fmt: skip
    if setup.startswith("draft"):
        other = llama if setup == "draft-same" else tiny("llama", seed=3)
        eng = Engine(eng.model, eng.config, draft=CompactLM(other, 512))
    run, ids = _run(eng, setup.split("-")[0], prompts, lengths)
    _check(run, ids, prompts, lengths, ref)
    assert eng.drafted > 20
    if setup in ("self-all", "draft-same"):  # the target drafting for itself: all kept
        assert eng.accepted >= 0.97 * eng.drafted
    assert not eng.live and int(eng.cache.refs.sum()) == sum(len(s.cols) for s in eng.cached)


def test_self_drafts_on_smollm2_equal_plain_decoding(
    smol: Smol, chat: Chat, smol_ref: RefCache
) -> None:
    hf = smol[0]
    prompts = [chat(q) for q in ("List three uses of copper.", "Explain what a compiler does.")]
    for mode in ("rows", "tree"):
        eng, _ = make_engine(
            hf, mode=mode, budget_tokens=1024, rows=4, speculate="always",
            self_layers=tuple(i for i in range(30) if i not in (9, 14, 19)),
        )  # fmt: skip
        run = Run()
        ids = [eng.submit(list(p), greedy(24), make("self")) for p in prompts]
        drain(eng, run, ids)
        for p, i in zip(prompts, ids, strict=True):
            assert run.tokens[i] == smol_ref(list(p), 24)
        assert eng.drafted > 10 and eng.accepted > 0


def _second_token_counts(
    eng: Engine, prompt: list[int], t1: int, n: int, seed0: int
) -> Counter[int]:
    ids = [
        eng.submit(prompt, GenParams(3, temperature=0.8, seed=seed0 + s), make("draft"))
        for s in range(n)
    ]
    run = Run()
    drain(eng, run, ids, max_steps=4000)
    return Counter(run.tokens[i][1] for i in ids if run.tokens[i][0] == t1)


def test_sampled_model_drafts_follow_the_target_distribution(llama: torch.nn.Module) -> None:
    """Draft from another model's q, keep with min(1, p/q): the second token follows p."""
    prompt = torch.randint(3, 256, (10,), generator=torch.Generator().manual_seed(16)).tolist()
    with torch.inference_mode():
        first = torch.softmax(hf_logits(llama, prompt)[-1] / 0.8, dim=-1)
        t1 = int(first.argmax())
        probs = torch.softmax(hf_logits(llama, [*prompt, t1])[-1] / 0.8, dim=-1)
    drafter = tiny("llama", seed=3)
    eng, _ = make_engine(llama, mode="tree", budget_tokens=16384, max_seqs=1024, speculate="always")
    eng = Engine(eng.model, eng.config, draft=CompactLM(drafter, 512))
    seconds = _second_token_counts(eng, prompt, t1, 2500, 0)
    n = sum(seconds.values())
    assert n > 300 and eng.drafted > n
    assert 0 < eng.accepted < eng.drafted  # some drafts kept, some rejected
    top = probs.argsort(descending=True)[:6].tolist()
    obs = [seconds[t] for t in top] + [n - sum(seconds[t] for t in top)]
    exp = [float(probs[t]) * n for t in top] + [n * (1 - float(probs[top].sum()))]
    chi2 = sum((o - e) ** 2 / e for o, e in zip(obs, exp, strict=True))
    assert chi2 < 22.5  # 6 degrees of freedom, p = 0.001


def test_a_seeded_sampled_request_repeats_with_model_drafts(llama: torch.nn.Module) -> None:
    """The company is seeded too, so that every run of this test computes the same steps:
    unseeded, its draws (and so how many drafts each of its steps verifies) would change the
    shapes of the steps the seeded request runs in from run to run, and fp32 sums can differ
    in the last bits with the number of queries per row."""
    prompt = torch.randint(3, 256, (12,), generator=torch.Generator().manual_seed(2)).tolist()
    outs = []
    for company in (0, 5):  # alone, then beside other requests
        eng, _ = make_engine(llama, mode="rows", budget_tokens=2048, rows=8, speculate="always")
        eng = Engine(eng.model, eng.config, draft=CompactLM(tiny("llama", seed=3), 512))
        others = [
            eng.submit(
                prompt[:-1] + [7 + j], GenParams(20, temperature=0.9, seed=100 + j), make("draft")
            )
            for j in range(company)
        ]
        i = eng.submit(prompt, GenParams(20, temperature=0.9, seed=42), make("draft"))
        run = Run()
        drain(eng, run, [*others, i])
        outs.append(run.tokens[i])
        assert eng.drafted > 0
    assert outs[0] == outs[1]


def test_draft_filler_without_a_draft_model_is_refused(llama: torch.nn.Module) -> None:
    eng, _ = make_engine(llama)
    with pytest.raises(ValueError, match="needs a draft model"):
        eng.submit([5, 6, 7], greedy(4), make("draft"))
    assert not eng.waiting


@pytest.mark.parametrize("layers", [(0, 3), (-1,), (1, 1)])
def test_self_layers_outside_the_model_are_refused(
    llama: torch.nn.Module, layers: tuple[int, ...]
) -> None:
    with pytest.raises(ValueError, match="distinct layer indices"):
        Engine(CompactLM(llama, 512), EngineConfig(self_layers=layers))


def test_a_draft_model_with_another_vocabulary_is_refused(llama: torch.nn.Module) -> None:
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, vocab_size=300,
    )  # fmt: skip
    other = AutoModelForCausalLM.from_config(cfg).eval()
    with pytest.raises(ValueError, match="vocabulary"):
        Engine(CompactLM(llama, 512), EngineConfig(), draft=CompactLM(other, 512))


def test_calibration_measures_what_drafting_sees(llama: torch.nn.Module) -> None:
    lm = CompactLM(llama, 512)
    text = torch.randint(3, 256, (64,), generator=torch.Generator().manual_seed(9)).tolist()
    assert agreement(lm, text, [0, 1, 2]) == 1.0
    partial = agreement(lm, text, [0, 2])
    assert 0.0 < partial < 1.0
    # a self-drafter's first draft after a sequence is kept exactly where `matches` says
    cfg = EngineConfig(speculate="always", self_layers=(0, 2), retain=False, self_weights="target")
    eng = Engine(CompactLM(llama, 512), cfg)
    outcomes = set()
    for t in range(40, 52):
        i = eng.submit(text[:t], greedy(3), make("self"))
        run = Run()
        drain(eng, run, [i])
        want = bool(matches(lm, [*text[:t], run.tokens[i][0]], [0, 2])[-1])
        assert (eng.accepted, eng.drafted) == (int(want), 1), t
        eng.accepted = eng.drafted = 0
        outcomes.add(want)
    assert outcomes == {True, False}
    # a free drafter: the fewest layers skipped (the most agreement) wins; a dear one: none
    trace: list[torch.Tensor] = []
    ids = torch.tensor(text)
    lm.run(_causal(ids), *_scratch(lm, 64), None, trace)
    least = min(range(3), key=lambda i: influence(trace)[i])
    free = calibrate(lm, text, cost=lambda kept: 0.0)
    assert free == tuple(i for i in range(3) if i != least)
    assert calibrate(lm, text, cost=lambda kept: 5.0) == ()


def _causal(ids: torch.Tensor) -> StepInput:
    n = len(ids)
    at = torch.arange(n)
    mask = torch.zeros(1, 1, n, 2 * n, dtype=torch.bool)
    mask[0, 0, :, :n] = torch.ones(n, n, dtype=torch.bool).tril()
    return StepInput(ids, at, torch.zeros_like(at), at, at, mask, at)


def test_calibrated_layers_are_cached_per_model(
    llama: torch.nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PARAFILL_CACHE", str(tmp_path))
    lm = CompactLM(llama, 512)
    text = list(range(3, 60))
    first = layers_for(lm, text)
    stored = json.loads((tmp_path / "self-layers.json").read_text())
    assert list(stored.values()) == [list(first)]
    (tmp_path / "self-layers.json").write_text(json.dumps({k: [1] for k in stored}))
    assert layers_for(lm, text) == (1,)  # read back, not recomputed


def test_speedup_model() -> None:
    assert speedup(0.0, 0.5) == 1 / 1.5
    assert speedup(1.0, 0.0, k_max=4) == 5.0
    assert 1.0 < speedup(0.8, 0.5) < speedup(0.9, 0.5)


def test_the_drafters_keep_rate_is_learned_from_verdicts(
    smol: Smol, chat: Chat, smol_ref: RefCache
) -> None:
    """A drafter starts from its own probability as the chance a draft is kept and learns the
    kept rate per probability bin from the verify steps: SmolLM2 drafting for itself with every
    layer keeps nearly every draft, so every bin it was judged in rises far above its prior,
    and the output stays exactly the reference."""
    eng, _ = make_engine(smol[0], mode="rows", budget_tokens=1024, rows=2, speculate="always",
                         self_layers=tuple(range(30)))  # fmt: skip
    prompt = chat("Write a short story about a lighthouse keeper.")
    run = Run()
    i = eng.submit(list(prompt), greedy(64), make("self"))
    drain(eng, run, [i])
    assert run.tokens[i] == smol_ref(list(prompt), 64)
    drafter = eng.model_drafters["self"]
    assert drafter is not None
    # the bins below 1/2 that got 3+ verdicts: kept far more often than their centre says
    low = [kept / seen for kept, seen in drafter.bins[:5] if seen >= 5]
    assert len(low) >= 2 and all(rate >= 0.6 for rate in low), drafter.bins
    assert eng.accepted / max(1, eng.drafted) > 0.8


def test_keep_rate_bins_count_kept_and_the_first_rejected_only(llama: torch.nn.Module) -> None:
    eng, _ = make_engine(llama, mode="rows", budget_tokens=256, rows=1, speculate="always",
                         self_layers=(0,))  # fmt: skip
    i = eng.submit([1, 2, 3], greedy(4), make("self"))
    drain(eng, Run(), [i])
    drafter = eng.model_drafters["self"]
    assert drafter is not None
    before = [list(b) for b in drafter.bins]
    drafter.learn([0.15, 0.95, 0.55, 0.35], accepted=2)  # kept, kept, rejected, not judged
    after = drafter.bins
    assert after[1] == [before[1][0] + 1, before[1][1] + 1]
    assert after[9] == [before[9][0] + 1, before[9][1] + 1]
    assert after[5] == [before[5][0], before[5][1] + 1]
    assert after[3] == before[3]
    assert drafter.keep_rate(0.15) == after[1][0] / after[1][1]
