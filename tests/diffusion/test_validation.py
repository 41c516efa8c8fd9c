"""Bad input is refused with a clear ValueError before any work."""

from __future__ import annotations

import pytest
from diffusion_ref import MASK, VOCAB

from parafill.diffusion import DiffusionLM, Options


@pytest.mark.parametrize(
    ("prompts", "max_tokens", "options", "message"),
    [
        ([[]], 4, {}, "prompt 0 is empty"),
        ([], 4, {}, "no prompts"),
        ([[1, 2]], 0, {}, "max_tokens"),
        ([[1, 2]], 4, {"block": 0}, "block must be positive"),
        ([[1, 2]], 4, {"block": -3}, "block must be positive"),
        ([[1, 2]], 4, {"threshold": 0.0}, r"threshold must be in \(0, 1\]"),
        ([[1, 2]], 4, {"threshold": 1.5}, r"threshold must be in \(0, 1\]"),
        ([[1, 2]], 4, {"factor": 0.0}, "factor must be positive"),
        ([[1, 2]], 4, {"cache": "full"}, "cache must be one of"),
        ([[1, 2]], 4, {"max_batch": 0}, "max_batch"),
        ([[1, VOCAB]], 4, {}, "outside"),
        ([[1, 2], [-1]], 4, {}, "prompt 1 has token ids outside"),
        ([[1, MASK]], 4, {}, "mask id"),
        ([[1, 2]], 4, {"temperature": 0.5}, "unknown decoding options"),
    ],
)
def test_bad_input(
    models: dict[str, DiffusionLM],
    prompts: list[list[int]],
    max_tokens: int,
    options: dict[str, object],
    message: str,
) -> None:
    for kind in ("qwen", "llada"):
        with pytest.raises(ValueError, match=message):
            models[kind].generate(prompts, max_tokens, **options)


def test_options_object_or_keywords(models: dict[str, DiffusionLM]) -> None:
    model = models["qwen"]
    a = model.generate([[3, 4]], 5, Options(block=4, threshold=1.0, eos=()))
    b = model.generate([[3, 4]], 5, block=4, threshold=1.0, eos=[])
    assert a.results == b.results
    with pytest.raises(ValueError, match="either"):
        model.generate([[3, 4]], 5, Options(), block=4)
    with pytest.raises(ValueError, match="no branches"):
        model.generate_packed([3, 4], [], 5)
