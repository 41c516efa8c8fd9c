"""Token log-probabilities reported with each step's tokens: equal (fp32, CPU) to the HF
model's own log-softmax at the chosen token, in every packing mode and on the static path,
for greedy and sampled requests; and carried up to the runner's NodeResult."""

from __future__ import annotations

import pytest
import torch
from engine_ref import hf_logits, make_engine, rand_prompt

from parafill.backends.engine.sampling import GenParams

MODES = ["rows", "tree", "rows-static", "tree-static"]


@pytest.mark.parametrize("mode", MODES)
def test_logprobs_match_the_hf_forward(
    mode: str, tiny_models: dict[str, torch.nn.Module]
) -> None:
    hf = tiny_models["qwen2"]
    gen = torch.Generator().manual_seed(31)
    prompts = [rand_prompt(gen, 9 + 3 * i) for i in range(3)]
    params = [GenParams(6), GenParams(6, temperature=0.8, seed=4), GenParams(5)]
    eng, _ = make_engine(hf, mode=mode, budget_tokens=256, rows=4)
    ids = [eng.submit(p, g) for p, g in zip(prompts, params, strict=True)]
    toks: dict[int, list[int]] = {i: [] for i in ids}
    lps: dict[int, list[float]] = {i: [] for i in ids}
    for _ in range(40):
        for o in eng.step():
            assert len(o.logprobs) == len(o.tokens)
            toks[o.seq_id] += o.tokens
            lps[o.seq_id] += o.logprobs
    for i, p in zip(ids, prompts, strict=True):
        assert len(toks[i]) > 0
        full = p + toks[i]
        logp = torch.log_softmax(hf_logits(hf, full), dim=-1)  # (T, V)
        want = [float(logp[len(p) - 1 + k, t]) for k, t in enumerate(toks[i])]
        assert lps[i] == pytest.approx(want, abs=1e-4)
        assert all(x <= 0 for x in lps[i])
