"""Ordered attention's key lists name exactly the columns the attention mask lets each query
see: every step of engines in rows and tree mode, with shared prefixes, n-gram chains and
Jacobi draft trees, is built both ways and compared query by query (the mask is the older,
independently written rule). The lists must also be in position order: a query's keys are
its sequence's positions 0..p (each column once)."""

from __future__ import annotations

import ctypes
from typing import Any

import pytest
import torch
from engine_ref import Run, drain

from parafill.backends.engine import kernels, runner
from parafill.backends.engine.engine import Engine, EngineConfig
from parafill.backends.engine.model import CompactLM, StepInput
from parafill.backends.engine.sampling import GenParams
from parafill.backends.engine.schedule import Seq
from parafill.backends.engine.step import build_step
from parafill.fillers import make

pytestmark = pytest.mark.skipif(not kernels.available(), reason="needs parafill's CPU kernels")


def _visible(step: StepInput, i: int) -> set[int]:
    """The KV columns the mask lets new token i see."""
    assert step.mask is not None
    mrow = int(step.mrows[i]) if step.mrows is not None else int(step.rows[i]) - step.row0
    seen = step.mask[mrow, 0, int(step.qslots[i])].nonzero().flatten()
    cols = step.keep[seen] if step.keep is not None else seen
    return {int(c) for c in cols}


def _listed(step: StepInput, i: int) -> list[int]:
    keys = step.keys
    assert keys is not None
    n = int(keys.lens[i])
    return list((ctypes.c_int32 * n).from_address(int(keys.ptrs[i])))


class Checked:
    def __init__(self) -> None:
        self.steps = self.queries = 0

    def __call__(
        self, feeds: list[tuple[Seq, int]], vis: torch.Tensor, device: Any, ordered: bool = False
    ) -> Any:
        masked, _ = build_step(feeds, vis, device, False)
        step, layout = build_step(feeds, vis, device, True)
        assert step.keys is not None
        assert step.keys.rows.tolist() == masked.rows.tolist()
        assert step.keys.cols.tolist() == masked.cols.tolist()
        for i in range(len(step.tokens)):
            listed = _listed(step, i)
            assert len(set(listed)) == len(listed) == int(step.positions[i]) + 1
            assert set(listed) == _visible(masked, i), (self.steps, i)
            assert listed[-1] == int(step.keys.cols[i])  # a query sees itself last
            self.queries += 1
        self.steps += 1
        return step, layout


CASES = {
    "rows": ("rows", {}, "autoregressive"),
    "tree": ("tree", {}, "autoregressive"),
    "tree-shared": ("tree", {"min_share": 4}, "autoregressive"),
    "rows-shared": ("rows", {"min_share": 4}, "autoregressive"),
    "rows-ngram": ("rows", {"speculate": "always"}, "ngram"),
    "tree-jacobi": ("tree", {"speculate": "always"}, "jacobi"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_key_lists_match_the_mask(
    llama: torch.nn.Module, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    mode, extra, filler = CASES[case]
    check = Checked()
    monkeypatch.setattr(runner, "build_step", check)
    cfg = EngineConfig(mode=mode, budget_tokens=1024, rows=4, **extra)  # type: ignore[arg-type]
    engine = Engine(CompactLM(llama, 512), cfg)
    assert engine.runner.ordered
    shared = [5, 6, 7, 8, 9, 10, 11, 12]
    prompts = [shared + [20 + i, 3, 4] * (i + 1) for i in range(4)]
    ids = [engine.submit(p, GenParams(24), make(filler)) for p in prompts]
    drain(engine, Run(), ids)
    assert check.steps > 10 and check.queries > 100
