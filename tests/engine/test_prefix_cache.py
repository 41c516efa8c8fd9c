"""The retained prefix cache: a finished request's KV serves later requests that share its
prefix (a DAG's next stage, a chat's next turn). fp32 CPU, every packing mode: the tokens
are exactly the reference's, the reused prefix is not fed again, and cached entries give
their room back the moment a waiting request needs it.
"""

from __future__ import annotations

import pytest
import torch
from engine_ref import RecordingLM, RefCache, Run, drain, greedy, make_engine, rand_prompt

from parafill.backends.engine.engine import Engine
from parafill.backends.engine.model import StepInput

MODES = ["rows", "tree", "rows-static", "tree-static"]


@pytest.mark.parametrize("mode", MODES)
def test_next_turn_reuses_the_finished_turn(
    llama: torch.nn.Module, ref: RefCache, mode: str
) -> None:
    """Turn 2's prompt is turn 1's prompt + its answer + more: only the new part is fed."""
    gen = torch.Generator().manual_seed(11)
    first = rand_prompt(gen, 30)
    eng, lm = make_engine(llama, mode=mode, budget_tokens=512, rows=4)
    run = Run()
    a = eng.submit(first, greedy(8))
    drain(eng, run, [a])
    assert run.tokens[a] == ref(first, 8)
    assert [s.id for s in eng.cached] == [a]
    second = first + run.tokens[a] + rand_prompt(gen, 5)
    fed_before = lm.fed
    b = eng.submit(second, greedy(9))
    drain(eng, run, [b])
    assert run.tokens[b] == ref(second, 9)
    reusable = len(first) + 8 - 1  # the last sampled token of turn 1 was never fed
    assert eng.reused == reusable
    decoded = 0 if mode.endswith("static") else 9 - 1  # static decode steps bypass `forward`
    assert lm.fed - fed_before == len(second) - reusable + decoded


@pytest.mark.parametrize("mode", MODES)
def test_siblings_arriving_after_the_parent_finished(
    llama: torch.nn.Module, ref: RefCache, mode: str
) -> None:
    """A DAG's second stage: several prompts extend a finished one; each is exact."""
    gen = torch.Generator().manual_seed(12)
    parent = rand_prompt(gen, 40)
    eng, _ = make_engine(llama, mode=mode, budget_tokens=600, rows=4)
    run = Run()
    p = eng.submit(parent, greedy(3))
    drain(eng, run, [p])
    kids = [parent + rand_prompt(gen, 2 + k) for k in range(3)]
    ids = [eng.submit(k, greedy(6 + i)) for i, k in enumerate(kids)]
    drain(eng, run, ids)
    for i, k, n in zip(ids, kids, (6, 7, 8), strict=True):
        assert run.tokens[i] == ref(k, n)
    assert eng.reused >= len(parent)  # the first child took it from the cache
    eng.drop_cached()
    assert int(eng.cache.refs.sum()) == 0


@pytest.mark.parametrize("mode", ["rows", "tree"])
def test_cached_entries_are_evicted_least_recently_used_first(
    llama: torch.nn.Module, ref: RefCache, mode: str
) -> None:
    """The cache fills with finished requests; a newcomer that needs room evicts the oldest
    first, and one that shares the newest entry's prefix still reuses it."""
    gen = torch.Generator().manual_seed(13)
    prompts = [rand_prompt(gen, 20) for _ in range(3)]
    # rows: 3 rows of 40; tree: 120 columns (each request below takes 26..40)
    eng, _ = make_engine(llama, mode=mode, budget_tokens=120, rows=3)
    run = Run()
    ids = []
    for p in prompts:
        ids.append(eng.submit(p, greedy(6)))
        drain(eng, run, ids)
    assert [s.id for s in eng.cached] == ids
    newcomer = prompts[2] + rand_prompt(gen, 4)  # shares the newest entry
    stranger = rand_prompt(gen, 30)  # needs a whole free row / 40 columns
    i_new = eng.submit(newcomer, greedy(6))
    i_str = eng.submit(stranger, greedy(10))
    drain(eng, run, [i_new, i_str])
    assert run.tokens[i_new] == ref(newcomer, 6)
    assert run.tokens[i_str] == ref(stranger, 10)
    assert eng.reused >= len(prompts[2])
    assert ids[0] not in {s.id for s in eng.cached}  # the oldest went first
    eng.drop_cached()
    assert int(eng.cache.refs.sum()) == 0


def test_rows_mode_adopts_the_only_row_without_a_copy(
    llama: torch.nn.Module, ref: RefCache
) -> None:
    """One row: the finished request's row is taken over in place by the next request."""
    gen = torch.Generator().manual_seed(14)
    first = rand_prompt(gen, 24)
    eng, lm = make_engine(llama, mode="rows", budget_tokens=64, rows=1)
    run = Run()
    a = eng.submit(first, greedy(4))
    drain(eng, run, [a])
    second = first[:20] + rand_prompt(gen, 6)
    fed_before = lm.fed
    b = eng.submit(second, greedy(12))
    drain(eng, run, [b])
    assert run.tokens[b] == ref(second, 12)
    assert eng.reused == 20
    assert lm.fed - fed_before == 6 + 12 - 1
    assert [s.id for s in eng.cached] == [b]


def test_retain_off_releases_everything(llama: torch.nn.Module, ref: RefCache) -> None:
    gen = torch.Generator().manual_seed(15)
    first = rand_prompt(gen, 20)
    eng, _ = make_engine(llama, budget_tokens=256, rows=2, retain=False)
    run = Run()
    a = eng.submit(first, greedy(5))
    drain(eng, run, [a])
    b = eng.submit(first + rand_prompt(gen, 3), greedy(5))
    drain(eng, run, [b])
    assert not eng.cached and eng.reused == 0
    assert int(eng.cache.refs.sum()) == 0


def test_a_failed_forward_is_not_cached(llama: torch.nn.Module) -> None:
    """KV of a step that raised may be half written: it must never serve a later request."""
    gen = torch.Generator().manual_seed(16)
    prompt = rand_prompt(gen, 12)
    eng, lm = make_engine(llama, budget_tokens=256, rows=2)
    real = lm.forward

    def broken(*args: object) -> torch.Tensor:
        raise RuntimeError("device fell over")

    lm.forward = broken  # type: ignore[method-assign]
    run = Run()
    a = eng.submit(prompt, greedy(4))
    outs = eng.step()
    assert [(o.seq_id, o.finish) for o in outs] == [(a, "error")]
    assert not eng.cached
    lm.forward = real  # type: ignore[method-assign]
    b = eng.submit(prompt, greedy(4))
    drain(eng, run, [b])
    assert eng.reused == 0


def test_waiting_for_a_slot_does_not_evict_the_cache(llama: torch.nn.Module, ref: RefCache) -> None:
    """Tree mode, 2 sequence slots: a request waiting for a slot leaves the cache alone
    (evicting could not give it a slot), then reuses the cached prefix once admitted."""
    gen = torch.Generator().manual_seed(17)
    a = rand_prompt(gen, 24)
    eng, _ = make_engine(llama, mode="tree", budget_tokens=512, max_seqs=2)
    run = Run()
    ia = eng.submit(a, greedy(3))
    drain(eng, run, [ia])
    ib = eng.submit(rand_prompt(gen, 10), greedy(4))
    ic = eng.submit(rand_prompt(gen, 10), greedy(12))
    d = a + rand_prompt(gen, 4)
    idd = eng.submit(d, greedy(5))
    eng.step()
    assert [s.id for s in eng.waiting] == [idd]
    assert [s.id for s in eng.cached] == [ia]
    drain(eng, run, [ib, ic, idd])
    assert run.tokens[idd] == ref(d, 5)
    assert eng.reused >= len(a)


def test_attention_skips_the_rows_below_the_first_with_queries(
    llama: torch.nn.Module, ref: RefCache
) -> None:
    """Retained entries hold the low rows; a later request in a higher row is attended over
    its own row only (it once ran over every row below it: 6x the attention work at row 5)."""
    gen = torch.Generator().manual_seed(13)
    eng, lm = make_engine(
        llama, mode="rows", budget_tokens=512, rows=4, attention="native"
    )  # the mask path (ordered: key lists)
    prompt = rand_prompt(gen, 25)
    steps = _after_three_cached(eng, lm, ref, gen, (20, 21, 22), prompt)
    assert steps and all(s.row0 == 3 and s.mask.shape[0] == 1 for s in steps)


def _after_three_cached(
    eng: Engine,
    lm: RecordingLM,
    ref: RefCache,
    gen: torch.Generator,
    sizes: tuple[int, ...],
    prompt: list[int],
) -> list[StepInput]:
    """Finish unrelated prompts of `sizes` (each stays in the prefix cache), then decode
    `prompt` (exactly the reference's tokens); the steps that decoded it."""
    run = Run()
    for n in sizes:
        i = eng.submit(rand_prompt(gen, n), greedy(3))
        drain(eng, run, [i])
    assert len(eng.cached) == len(sizes)
    before = len(lm.steps)
    b = eng.submit(prompt, greedy(6))
    drain(eng, run, [b])
    assert run.tokens[b] == ref(prompt, 6)
    return lm.steps[before:]


def test_a_tree_row_full_of_cached_entries_is_attended_over_the_seen_columns_only(
    llama: torch.nn.Module, ref: RefCache
) -> None:
    """Tree mode keeps finished requests' KV in its one row; a later request's steps read only
    the columns some query sees (it once attended over the whole filled width: the 20 SoT
    questions took 150 s instead of 35 s on the 2-core CPU)."""
    gen = torch.Generator().manual_seed(14)
    eng, lm = make_engine(
        llama, mode="tree", budget_tokens=512, attention="native"
    )  # the mask path (ordered: key lists)
    prompt = rand_prompt(gen, 20)
    steps = _after_three_cached(eng, lm, ref, gen, (30, 31, 32), prompt)
    assert steps
    for s in steps:
        assert s.keep is not None and s.mask.shape[-1] == s.keep.numel()
        assert s.keep.numel() <= 1 + len(prompt) + 6  # column 0 (padding lanes) and its own
        assert int(s.keep.max()) >= 90  # behind the three cached entries


def test_a_short_match_does_not_cut_a_long_cached_prefix(
    llama: torch.nn.Module, ref: RefCache
) -> None:
    """Rows mode with an empty row to spare: a request sharing only a cached entry's first
    min_share tokens copies them and leaves the entry whole, so a later request sharing its
    whole template is still served from the cache (before, the first request took the row over
    and cut the entry to the tokens it shared)."""
    gen = torch.Generator().manual_seed(15)
    template = rand_prompt(gen, 40)
    eng, lm = make_engine(llama, mode="rows", budget_tokens=4 * 128, rows=4, min_share=16)
    run = Run()
    a = eng.submit(template + rand_prompt(gen, 6), greedy(4))
    drain(eng, run, [a])
    b_prompt = template[:16] + rand_prompt(gen, 20)
    b = eng.submit(b_prompt, greedy(4))
    drain(eng, run, [b])
    assert run.tokens[b] == ref(b_prompt, 4)
    reused = eng.reused
    c_prompt = template + rand_prompt(gen, 6)
    fed_before = lm.fed
    c = eng.submit(c_prompt, greedy(6))
    drain(eng, run, [c])
    assert run.tokens[c] == ref(c_prompt, 6)
    assert eng.reused - reused == 40
    assert lm.fed - fed_before == 6 + 6 - 1


def test_rows_without_queries_between_live_rows_are_not_attended(
    llama: torch.nn.Module, ref: RefCache
) -> None:
    """The middle request finishes first and stays cached in its row: the steps after that
    attend over rows 0 and 2 one run at a time (`spans`), not over the cached row between."""
    gen = torch.Generator().manual_seed(16)
    prompts = [rand_prompt(gen, 12) for _ in range(3)]
    eng, lm = make_engine(
        llama, mode="rows", budget_tokens=4 * 64, rows=4, attention="native"
    )  # the mask path (ordered: key lists)
    budgets = [16, 3, 16]
    ids = [eng.submit(p, greedy(n)) for p, n in zip(prompts, budgets, strict=True)]
    run = Run()
    drain(eng, run, ids)
    for i, p, n in zip(ids, prompts, budgets, strict=True):
        assert run.tokens[i] == ref(p, n)
    split = [s for s in lm.steps if s.spans is not None]
    assert split and all(s.spans == ((0, 1), (2, 1)) for s in split)
    assert all(s.mask.shape[0] == 2 for s in split)  # the mask holds the two live rows only
    assert len(split) == 16 - 3  # every step after the middle request finished
