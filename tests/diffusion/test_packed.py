"""Tree packing: branches sharing one prompt decoded in one sequence equal separate rows."""

from __future__ import annotations

import pytest

from parafill.diffusion import DiffusionLM

PREFIX = [20, 21, 22, 23, 24, 25, 26, 27]
TAILS = [[30, 31], [], [40, 41, 42, 43, 44], [50]]


@pytest.mark.parametrize("kind", ["qwen", "qwen_peaked"])
@pytest.mark.parametrize("prefix_len", [8, 6, 3])
@pytest.mark.parametrize(
    "options",
    [
        {"threshold": 1.0, "cache": "none"},
        {"threshold": 1.0, "cache": "prefix"},
        {"threshold": 0.7, "cache": "dual"},
        {"factor": 1.0, "cache": "prefix"},
    ],
)
def test_packed_equals_rows(
    models: dict[str, DiffusionLM], kind: str, prefix_len: int, options: dict[str, object]
) -> None:
    """The prefix's whole blocks are computed once; each branch attends them and its own
    blocks only. Token for token the same as decoding each branch as its own row (the prefix
    rounds down to whole blocks: 8 -> 8, 6 -> 4, 3 -> 0 shared tokens at block 4)."""
    model, prefix = models[kind], PREFIX[:prefix_len]
    kw = {"block": 4, "eos": (), **options}
    packed = model.generate_packed(prefix, TAILS, 10, **kw)
    rows = model.generate([prefix + t for t in TAILS], 10, **kw)
    assert packed.packed
    assert [r.tokens for r in packed.results] == [r.tokens for r in rows.results]
    assert [r.forwards for r in packed.results] == [r.forwards for r in rows.results]
    assert set(packed.batch_sizes) == {1}


def test_packed_with_eos(models: dict[str, DiffusionLM]) -> None:
    model = models["qwen"]
    free = model.generate([PREFIX + t for t in TAILS], 12, block=4, threshold=1.0, eos=())
    eos = free.results[0].tokens[2]
    kw = {"block": 4, "threshold": 1.0, "cache": "prefix", "eos": (eos,)}
    packed = model.generate_packed(PREFIX, TAILS, 12, **kw)
    rows = model.generate([PREFIX + t for t in TAILS], 12, **kw)
    assert packed.results == rows.results
    assert packed.results[0].finish == "eos"


def test_llada_branches_run_as_rows(models: dict[str, DiffusionLM]) -> None:
    """LLaDA's prompt attends to its answer, so one prefix cannot serve several answers:
    generate_packed decodes the branches as separate rows and says so."""
    model = models["llada"]
    kw = {"block": 4, "threshold": 1.0, "eos": ()}
    packed = model.generate_packed(PREFIX, TAILS, 8, **kw)
    rows = model.generate([PREFIX + t for t in TAILS], 8, **kw)
    assert not packed.packed
    assert packed.results == rows.results
