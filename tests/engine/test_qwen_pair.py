"""The optional Qwen2.5-Coder pair (0.5B-Instruct draft, 1.5B-Instruct target) in parafill's
engine: both GGUFs load (compact forward, not the HF fallback), share one tokenizer, and the
draft's greedy output through LocalBackend is token-exact with transformers' own `generate` on
the same GGUF (fp32). Slow (conversion once, then ~1-2 min on 2 cores), and skipped unless
`python scripts/fetch_qwen_pair.py` has put the pair in its cache dir ($PARAFILL_QWEN_DIR, else
~/.cache/parafill/qwen-pair)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from engine_ref import greedy_ref

from parafill.backends.base import Request, Sampling
from parafill.backends.engine.engine import Engine, EngineConfig
from parafill.backends.engine.fallback import build_engine
from parafill.backends.engine.sampling import GenParams
from parafill.backends.engine.weights import load, resolve
from parafill.backends.local import LocalBackend, LocalConfig

pytestmark = pytest.mark.slow

VOCAB = 151_936  # tokens in both GGUFs' vocabularies and rows of both embedding matrices
PROMPT = "Write a Python function that returns the square of x."
TEXTS = [
    "def square(x):\n    return x * x\n",
    "Héllo wörld — 你好，世界! 🎉",
    "<|im_start|>user\nhi<|im_end|>\n",
    "   leading spaces\tand\ttabs\n\n\n",
    "import numpy as np; np.zeros((3, 4), dtype=np.float32)",
]


def _fetcher() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "scripts" / "fetch_qwen_pair.py"
    spec = importlib.util.spec_from_file_location("fetch_qwen_pair", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def pair() -> dict[str, Path]:
    fetcher = _fetcher()
    found = fetcher.cached()
    if found is None:
        pytest.skip(
            f"the Qwen2.5-Coder pair is not in {fetcher.default_dir()} "
            "(run: python scripts/fetch_qwen_pair.py)"
        )
    return dict(found)


def test_both_ggufs_share_one_vocabulary_and_tokenizer(pair: dict[str, Path]) -> None:
    import gguf
    from transformers import AutoTokenizer

    for path in pair.values():
        tensors = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
        for name in ("token_embd.weight", "output.weight"):  # untied: both stored
            assert int(tensors[name].shape[-1]) == VOCAB, (path.name, name)
    draft, target = (
        AutoTokenizer.from_pretrained(str(resolve(pair[role])), local_files_only=True)
        for role in ("draft", "target")
    )
    assert len(draft) == len(target) == VOCAB
    assert draft.get_vocab() == target.get_vocab()
    assert draft.eos_token_id == target.eos_token_id == 151_645  # <|im_end|>
    for text in TEXTS:
        ids = draft.encode(text)
        assert ids == target.encode(text), text
        assert draft.decode(ids) == text
    chat = [{"role": "user", "content": PROMPT}]
    assert draft.apply_chat_template(chat, add_generation_prompt=True) == (
        target.apply_chat_template(chat, add_generation_prompt=True)
    )


@pytest.mark.anyio
async def test_draft_greedy_through_the_engine_equals_hf_generate(pair: dict[str, Path]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, n = pair["draft"], 16
    cfg = LocalConfig(model=str(path), device="cpu", budget_tokens=2048, rows=2)
    request = Request.chat(PROMPT, sampling=Sampling(max_tokens=n))
    async with LocalBackend.open(cfg) as backend:
        assert isinstance(backend.engine, Engine)  # the compact forward, not HF's fallback
        assert backend.limits.vocab == VOCAB
        prompt = backend.encode(request.messages)
        got = [t for chunk in [c async for c in backend.stream(request)] for t in chunk.token_ids]

    # transformers on its own: the GGUF dequantized to fp32, its own tokenizer and generate
    kw = {"gguf_file": path.name, "local_files_only": True}
    tok = AutoTokenizer.from_pretrained(str(path.parent), **kw)
    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), dtype=torch.float32, **kw)
    hf.eval()
    ids = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True)
    ids = ids if isinstance(ids, list) else ids["input_ids"]
    assert list(ids) == prompt
    x = torch.tensor([prompt])
    with torch.inference_mode():
        out = hf.generate(
            x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False,
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        )  # fmt: skip
    want = out[0, len(prompt) :].tolist()
    assert len(want) == n  # the answer is longer than n tokens: no eos inside
    assert got == want, (tok.decode(got), tok.decode(want))


def test_target_loads_and_its_engine_matches_hf_greedy(pair: dict[str, Path]) -> None:
    """The 1.5B target: a short run (4 tokens) through the compact engine equals HF's greedy
    decoding of the same loaded weights."""
    hf, tok = load(pair["target"])
    assert hf.config.model_type == "qwen2"
    assert hf.model.embed_tokens.weight.shape[0] == hf.lm_head.weight.shape[0] == VOCAB
    ids = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True)
    prompt = [int(i) for i in (ids if isinstance(ids, list) else ids["input_ids"])]
    want = greedy_ref(hf, prompt, 4)
    notices: list[str] = []
    engine = build_engine(hf, EngineConfig(budget_tokens=1024, rows=2), 1024, notices.append)
    assert isinstance(engine, Engine) and not notices
    engine.submit(prompt, GenParams(max_tokens=4))
    got: list[int] = []
    for _ in range(20):
        outs = engine.step()
        assert all(o.error is None for o in outs)
        got += [t for o in outs for t in o.tokens]
        if any(o.finish is not None for o in outs):
            break
    assert got == want, (tok.decode(got), tok.decode(want))
