"""The step-wise decoder `Session`: prompts that join mid-batch (wider than the batch was built
for), cancellation and refusals, each row still equal to `generate` for its prompt alone."""

from __future__ import annotations

import pytest
from diffusion_ref import MASK

from parafill.diffusion import DiffusionLM, Result, Session

SHORT, LONG = [5, 6, 7], [9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21]
KW = {"block": 4, "threshold": 0.7, "eos": ()}


def _alone(model: DiffusionLM, prompt: list[int], n: int, cache: str) -> Result:
    return model.generate([prompt], n, cache=cache, **KW).results[0]  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["qwen_peaked", "llada_peaked", "qwen"])
@pytest.mark.parametrize("cache", ["none", "dual"])
def test_rows_joining_mid_batch_equal_rows_alone(
    models: dict[str, DiffusionLM], kind: str, cache: str
) -> None:
    model = models[kind]
    s = Session(model, cache=cache, **KW)  # type: ignore[arg-type]
    a = s.add(SHORT, 9)
    got = dict(s.step())
    assert s.running == 1 and s.batch_sizes == [1]
    b = s.add(LONG, 17)  # longer than the batch's columns: the batch widens
    c = s.add(SHORT[:2], 5)
    while s.busy:
        got.update(s.step())
    assert got[a] == _alone(model, SHORT, 9, cache)
    assert got[b] == _alone(model, LONG, 17, cache)
    assert got[c] == _alone(model, SHORT[:2], 5, cache)
    assert max(s.batch_sizes) == 3 and s.forwards == len(s.batch_sizes)


def test_max_batch_holds_rows_back_and_cancel_drops_them(models: dict[str, DiffusionLM]) -> None:
    model = models["qwen"]
    s = Session(model, max_batch=2, cache="dual", **KW)  # type: ignore[arg-type]
    keys = [s.add(p, 12) for p in (SHORT, LONG, SHORT[:1], LONG[:5])]
    s.step()
    assert (s.running, s.waiting) == (2, 2)
    assert s.cancel(keys[0]) and s.cancel(keys[2])  # one running, one waiting
    assert not s.cancel(keys[2]) and not s.cancel(99)
    assert (s.running, s.waiting) == (1, 1)
    got: dict[int, Result] = {}
    while s.busy:
        got.update(s.step())
    assert set(got) == {keys[1], keys[3]}
    assert got[keys[1]] == _alone(model, LONG, 12, "dual")
    assert got[keys[3]] == _alone(model, LONG[:5], 12, "dual")
    assert max(s.batch_sizes) == 2


def test_refusals_touch_nothing(models: dict[str, DiffusionLM]) -> None:
    s = Session(models["qwen"], **KW)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        s.add([], 4)
    with pytest.raises(ValueError, match="mask id"):
        s.add([1, MASK], 4)
    with pytest.raises(ValueError, match="max_tokens"):
        s.add([1], 0)
    with pytest.raises(ValueError, match="needs 520 positions"):
        s.check([1] * 505, 12)  # the checkpoint states 512 positions (whole blocks of 4)
    with pytest.raises(ValueError, match="the model has 256"):
        s.check([1] * 250, 12, context=256)
    s.check([1] * 500, 12)  # 512 exactly
    k = s.add([1, 2], 3, key=7)
    with pytest.raises(ValueError, match="already"):
        s.add([1, 2], 3, key=7)
    assert s.keys == (k,) == (7,)
    with pytest.raises(ValueError, match="threshold"):
        Session(models["qwen"], threshold=2.0)
