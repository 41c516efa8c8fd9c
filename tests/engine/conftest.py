"""Engine test fixtures: models are built once per session (fp32, CPU)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from engine_ref import TINY_KINDS, Chat, RefCache, Smol, tiny

from parafill.backends.engine.weights import ModelNotFound, load


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, torch.nn.Module]:
    return {kind: tiny(kind) for kind in TINY_KINDS}


@pytest.fixture(scope="session")
def tiny_refs(tiny_models: dict[str, torch.nn.Module]) -> dict[str, RefCache]:
    return {kind: RefCache(hf) for kind, hf in tiny_models.items()}


@pytest.fixture(scope="session")
def llama(tiny_models: dict[str, torch.nn.Module]) -> torch.nn.Module:
    return tiny_models["llama"]


@pytest.fixture(scope="session")
def ref(tiny_refs: dict[str, RefCache]) -> RefCache:
    return tiny_refs["llama"]


@pytest.fixture(scope="session")
def gpt2() -> torch.nn.Module:
    """A random GPT-2: an architecture the compact forward does not know (the HF fallback)."""
    from transformers import AutoModelForCausalLM, GPT2Config

    torch.manual_seed(0)
    cfg = GPT2Config(
        n_embd=64, n_layer=2, n_head=4, vocab_size=256, n_positions=256, initializer_range=0.2
    )
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.fixture(scope="session")
def smol() -> Smol:
    """The embedded SmolLM2-135M-Instruct (converted once, then cached)."""
    try:
        return load(None)
    except ModelNotFound as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def smol_ref(smol: Smol) -> RefCache:
    return RefCache(smol[0])


@pytest.fixture(scope="session")
def chat(smol: Smol) -> Chat:
    """Token ids of a chat prompt (system + user, generation prompt added)."""
    tok = smol[1]

    def encode(user: str, system: str | None = None) -> list[int]:
        msgs = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user}
        ]
        out = tok.apply_chat_template(msgs, add_generation_prompt=True)
        ids = out if isinstance(out, list) else out["input_ids"]
        return [int(i) for i in ids]

    return encode


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny steps lose more to thread hand-offs than they gain, badly so on a busy 2-core box
    (a 64-wide linear took 5 ms with 2 threads under load, 12 us with 1)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
