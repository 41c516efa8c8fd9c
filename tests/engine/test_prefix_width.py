"""A shared-prefix pseudo-sequence must not hold a batch row while its forks wait for rows:
with more requests sharing a prompt than there are rows, every row decodes."""

from __future__ import annotations

import pytest
import torch
from engine_ref import RefCache, Run, greedy, make_engine, rand_prompt


@pytest.mark.parametrize("retain", [True, False])
@pytest.mark.parametrize("mode", ["rows", "tree"])
def test_identical_prompts_fill_every_row(
    mode: str, retain: bool, llama: torch.nn.Module, ref: RefCache
) -> None:
    gen = torch.Generator().manual_seed(21)
    common = rand_prompt(gen, 30)
    prompts = [common] * 6 + [common + rand_prompt(gen, 4) for _ in range(6)]
    eng, _ = make_engine(llama, mode=mode, budget_tokens=4 * 128, rows=4, max_seqs=4, retain=retain)
    ids = [eng.submit(p, greedy(12)) for p in prompts]
    run, widest = Run(), 0
    for _ in range(400):
        run.take(eng.step())
        widest = max(widest, sum(not s.prefix_only for s in eng.live))
        if len(run.finish) == len(ids):
            break
    for i, p in zip(ids, prompts, strict=True):
        assert run.tokens[i] == ref(p, 12)
    assert widest == 4  # every row decoding at once (2 while a prefix held rows)


def test_a_step_attends_over_written_columns_only(llama: torch.nn.Module, ref: RefCache) -> None:
    """A request holds columns for its whole budget (prompt + max_tokens) from admission; a
    step's keys must reach only as far as what is written (and its new tokens), not over the
    empty columns held for tokens not yet generated (two rows decoding: the mask spans both)."""
    gen = torch.Generator().manual_seed(5)
    prompts = [rand_prompt(gen, 20), rand_prompt(gen, 20)]
    eng, lm = make_engine(
        llama, mode="rows", budget_tokens=2 * 256, rows=2, prefill_chunk=64, attention="native"
    )  # the mask's width (ordered attention reads each query's own key list)
    ids = [eng.submit(p, greedy(200)) for p in prompts]
    run = Run()
    for _ in range(12):
        run.take(eng.step())
    for i, p in zip(ids, prompts, strict=True):
        assert run.tokens[i] == ref(p, 12)
    assert [s.mask.shape[:1] for s in lm.steps] == [(2,)] * 12
    # step k (k >= 1) decodes the tokens at position 20 + k - 1: its keys are columns 0..20+k-1
    assert [s.mask.shape[-1] for s in lm.steps] == [20] + [20 + k for k in range(1, 12)]
