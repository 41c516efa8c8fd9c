"""The KV budget: requests that can never fit fail at submit; a full cache makes requests wait.

A waiting request is admitted when room frees up and still decodes exactly; columns shared by
reference (tree mode) stay alive while any sequence still reads them.
"""

from __future__ import annotations

import pytest
import torch
from engine_ref import RefCache, Run, drain, greedy, make_engine, rand_prompt, step

from parafill.backends.engine.kv import BudgetError

MODES = ["rows", "tree"]


@pytest.mark.parametrize(("mode", "budget", "rows", "room"), [
    ("rows", 256, 4, 64),  # a row holds budget / rows
    ("tree", 64, 4, 64),  # one row holds the whole budget
])
def test_request_larger_than_a_row_is_refused_at_submit(
    llama: torch.nn.Module, mode: str, budget: int, rows: int, room: int
) -> None:
    eng, _ = make_engine(llama, mode=mode, budget_tokens=budget, rows=rows)
    prompt = rand_prompt(torch.Generator().manual_seed(1), 40)
    with pytest.raises(BudgetError, match=rf"needs {room + 1} KV slots.*holds {room}"):
        eng.submit(prompt, greedy(room + 1 - 40))
    assert not eng.waiting and not eng.live
    i = eng.submit(prompt, greedy(room - 40))  # exactly a row's worth is fine
    run = Run()
    drain(eng, run, [i])
    assert run.finish[i] == "length"


def test_empty_prompt_is_refused(llama: torch.nn.Module) -> None:
    eng, _ = make_engine(llama, budget_tokens=64, rows=1)
    with pytest.raises(ValueError, match="empty"):
        eng.submit([], greedy(4))


@pytest.mark.parametrize(("mode", "budget", "rows"), [("rows", 128, 2), ("tree", 100, 4)])
def test_full_cache_makes_requests_wait_then_admits_them(
    llama: torch.nn.Module, ref: RefCache, mode: str, budget: int, rows: int
) -> None:
    """A (40 slots) and B (16) fill the cache; C (50) waits for B; D waits behind C."""
    gen = torch.Generator().manual_seed(2)
    prompts = [rand_prompt(gen, 10) for _ in range(4)]
    lengths = [30, 6, 40, 4]
    eng, _ = make_engine(llama, mode=mode, budget_tokens=budget, rows=rows)
    ia, ib, ic, idd = (eng.submit(p, greedy(n)) for p, n in zip(prompts, lengths, strict=True))
    run = Run()
    step(eng, run)
    assert {s.id for s in eng.live} == {ia, ib}
    assert [s.id for s in eng.waiting] == [ic, idd]
    while ib not in run.finish:
        assert ic not in run.tokens
        step(eng, run)
    step(eng, run)
    assert ic in {s.id for s in eng.live}
    drain(eng, run, [ia, ib, ic, idd])
    for i, p, n in zip((ia, ib, ic, idd), prompts, lengths, strict=True):
        assert run.tokens[i] == ref(p, n)
    eng.drop_cached()  # retained prefixes hold columns until evicted
    assert int(eng.cache.refs.sum()) == 0


def test_tree_mode_waits_for_a_free_sequence_slot(
    llama: torch.nn.Module, ref: RefCache
) -> None:
    gen = torch.Generator().manual_seed(3)
    prompts = [rand_prompt(gen, 8) for _ in range(3)]
    eng, _ = make_engine(llama, mode="tree", budget_tokens=512, max_seqs=2)
    ids = [eng.submit(p, greedy(n)) for p, n in zip(prompts, (5, 9, 6), strict=True)]
    run = Run()
    step(eng, run)
    assert len(eng.live) == 2 and [s.id for s in eng.waiting] == [ids[2]]
    drain(eng, run, ids)
    for i, p, n in zip(ids, prompts, (5, 9, 6), strict=True):
        assert run.tokens[i] == ref(p, n)


def test_shared_columns_outlive_the_sequence_that_wrote_them(
    llama: torch.nn.Module, ref: RefCache
) -> None:
    """Tree mode: B reads A's prefix columns by reference; A retires and D is admitted into
    the freed room. D must not get (and overwrite) the columns B still reads."""
    gen = torch.Generator().manual_seed(4)
    a = rand_prompt(gen, 24)
    b = a[:20] + rand_prompt(gen, 3)
    d = rand_prompt(gen, 30)
    eng, _ = make_engine(llama, mode="tree", budget_tokens=80)
    ia = eng.submit(a, greedy(2))  # 26 slots
    run = Run()
    step(eng, run)
    ib = eng.submit(b, greedy(20))  # 20 shared + 23 own
    step(eng, run, 2)
    assert ia in run.finish and ib not in run.finish
    assert [s.id for s in eng.cached] == [ia]  # A's KV is kept as a prefix cache
    assert eng.cache.free_cols[0] == 80 - 26 - 23
    idd = eng.submit(d, greedy(6))  # 36 slots: fits once A is evicted, beside B's columns
    step(eng, run)
    assert {s.id for s in eng.live} == {ib, idd}
    assert not eng.cached
    assert eng.cache.free_cols[0] == 80 - 20 - 23 - 36  # the shared 20 are still reserved
    drain(eng, run, [ia, ib, idd])
    assert run.tokens[ib] == ref(b, 20)
    assert run.tokens[idd] == ref(d, 6)
    eng.drop_cached()  # retained prefixes hold columns until evicted
    assert int(eng.cache.refs.sum()) == 0


@pytest.mark.parametrize("config", [
    {"mode": "rows", "rows": 1, "budget_tokens": 64},
    {"mode": "tree", "max_seqs": 1, "budget_tokens": 128},
], ids=["rows", "tree"])
def test_one_sequence_slot_still_serves_requests_sharing_a_prefix(
    llama: torch.nn.Module, ref: RefCache, config: dict[str, object]
) -> None:
    """A shared-prefix holder must not take the last slot: its forks could never start."""
    gen = torch.Generator().manual_seed(5)
    common = rand_prompt(gen, 24)
    prompts = [common + rand_prompt(gen, 2), common + rand_prompt(gen, 3)]
    eng, _ = make_engine(llama, **config)
    ids = [eng.submit(p, greedy(5)) for p in prompts]
    run = Run()
    drain(eng, run, ids, max_steps=50)
    for i, p in zip(ids, prompts, strict=True):
        assert run.tokens[i] == ref(p, 5)


def test_request_past_the_position_table_is_refused_at_submit(
    llama: torch.nn.Module, ref: RefCache
) -> None:
    """Fits the KV budget but not the model's 64 positions: refused up front, so it cannot
    fail the forward (and with it every request sharing the step) when it gets there."""
    gen = torch.Generator().manual_seed(6)
    short, long = rand_prompt(gen, 8), rand_prompt(gen, 60)
    eng, _ = make_engine(llama, max_positions=64, mode="tree", budget_tokens=1024)
    i = eng.submit(short, greedy(20))
    with pytest.raises(BudgetError, match="needs 70 positions.*set up for 64"):
        eng.submit(long, greedy(10))
    run = Run()
    drain(eng, run, [i])
    assert run.tokens[i] == ref(short, 20) and run.finish[i] == "length"


@pytest.mark.parametrize("config", [
    {"mode": "rows", "rows": 3, "budget_tokens": 192},
    {"mode": "tree", "max_seqs": 3, "budget_tokens": 512},
], ids=["rows", "tree"])
def test_more_forks_than_room_wait_for_the_shared_prefix(
    llama: torch.nn.Module, ref: RefCache, config: dict[str, object]
) -> None:
    """Four requests share a prefix but only two fit beside its holder: the others fork later
    from the same (kept) prefix, which is prefilled once."""
    gen = torch.Generator().manual_seed(7)
    common = rand_prompt(gen, 20)
    prompts = [common + [10 + k, *rand_prompt(gen, 2)] for k in range(4)]
    lengths = [4, 9, 6, 5]
    eng, lm = make_engine(llama, **config)
    ids = [eng.submit(p, greedy(n)) for p, n in zip(prompts, lengths, strict=True)]
    run = Run()
    step(eng, run, 2)
    assert [s.id for s in eng.waiting] == ids[2:]
    drain(eng, run, ids)
    for i, p, n in zip(ids, prompts, lengths, strict=True):
        assert run.tokens[i] == ref(p, n)
    assert lm.fed_where(lambda _t, pos: pos < len(common)) == len(common)


@pytest.mark.parametrize("mode", MODES)
def test_identical_prompts_share_all_but_their_last_token(
    llama: torch.nn.Module, ref: RefCache, mode: str
) -> None:
    prompt = rand_prompt(torch.Generator().manual_seed(8), 20)
    eng, lm = make_engine(llama, mode=mode, budget_tokens=512, rows=4)
    ids = [eng.submit(prompt, greedy(n)) for n in (3, 7, 5)]
    run = Run()
    drain(eng, run, ids)
    for i, n in zip(ids, (3, 7, 5), strict=True):
        assert run.tokens[i] == ref(prompt, n)
    assert lm.fed - (2 + 6 + 4) == len(prompt) + 3  # the prefix once, then each last token


# ---- a budget in bytes --------------------------------------------------------------------

from parafill.backends.engine.kv import bytes_per_token, parse_size  # noqa: E402


@pytest.mark.parametrize(("text", "want"), [
    ("2GiB", 2 * 2**30), ("512 MiB", 512 * 2**20), ("1.5GB", 1_500_000_000), ("100000", 100000),
    ("64kib", 65536), (" 3 tb ", 3 * 10**12),
])
def test_sizes_parse(text: str, want: int) -> None:
    assert parse_size(text) == want


@pytest.mark.parametrize("text", ["", "GiB", "2 GiBs", "-1GB", "1e9", "two"])
def test_bad_sizes_are_refused_by_name(text: str) -> None:
    with pytest.raises(ValueError, match="not a size.*examples"):
        parse_size(text)


@pytest.mark.parametrize(("mode", "rows"), [("rows", 4), ("tree", 1)])
def test_byte_budget_sizes_the_whole_cache_within_it(
    llama: torch.nn.Module, mode: str, rows: int
) -> None:
    eng, _ = make_engine(llama, mode=mode, budget_tokens=10**6, rows=4)
    per_token = bytes_per_token(eng.model.shapes, eng.model.dtype)
    budget = 300 * per_token + 123
    eng, _ = make_engine(llama, mode=mode, budget_bytes=budget, rows=4)
    assert eng.cache.nbytes <= budget  # scratch and alignment columns included
    assert eng.config.budget_tokens == 300 - 8 * rows  # not the 10**6 of budget_tokens
    room = eng.cache.spec.cols
    prompt = rand_prompt(torch.Generator().manual_seed(2), 10)
    with pytest.raises(BudgetError, match="KV slots"):
        eng.submit(prompt, greedy(room - 9))
    i = eng.submit(prompt, greedy(5))
    run = Run()
    drain(eng, run, [i])
    assert len(run.tokens[i]) == 5


def test_byte_budget_too_small_for_one_token_is_a_clear_error(llama: torch.nn.Module) -> None:
    with pytest.raises(BudgetError, match=r"KV budget of 1000 bytes holds no token.*bytes of K/V"):
        make_engine(llama, budget_bytes=1000, rows=4)


def test_byte_budget_on_the_hf_fallback(gpt2: torch.nn.Module) -> None:
    from parafill.backends.engine.engine import EngineConfig
    from parafill.backends.engine.fallback import FallbackEngine

    hf = gpt2
    per_token = 2 * 2 * 64 * 4  # K and V, 2 layers, 64 wide, fp32
    eng = FallbackEngine(hf, EngineConfig(budget_bytes=40 * per_token + 7), 128)
    assert eng.config.budget_tokens == 40
    with pytest.raises(BudgetError, match="40"):
        eng.submit([1, 2, 3], greedy(38))
