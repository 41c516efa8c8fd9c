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
