"""Constraint test fixtures: the embedded SmolLM2 tokenizer (no weights are loaded)."""

from __future__ import annotations

from typing import Any

import pytest
from transformers import AutoTokenizer

from parafill.backends.engine.weights import ModelNotFound, resolve
from parafill.constraints import TokenizerInfo, tokenizer_info


@pytest.fixture(scope="session")
def hf_tok() -> Any:
    try:
        return AutoTokenizer.from_pretrained(str(resolve(None)), local_files_only=True)
    except ModelNotFound as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def info(hf_tok: Any) -> TokenizerInfo:
    return tokenizer_info(hf_tok)
