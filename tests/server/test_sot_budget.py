"""`parafill-sot`'s usage counts the answer it returns, and max_tokens caps that answer (the
skeleton, which is not returned, shows in the `parafill` nodes only): streamed or not, the
same text, cut with finish_reason "length" where the cap ends it."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import KEY, Served
from openai import OpenAI

QUESTION = "What are the most effective ways to manage stress?"


@pytest.fixture(scope="module")
def client(served: Served) -> OpenAI:
    return OpenAI(base_url=served.url, api_key=KEY, max_retries=0, timeout=300)


def _tokens(served: Served, text: str) -> int:
    return len(served.backend.tokenizer.encode(text, add_special_tokens=False))


def _ask(client: OpenAI, max_tokens: int, **more: Any) -> Any:
    messages: Any = [{"role": "user", "content": QUESTION}]
    return client.chat.completions.create(
        model="parafill-sot", messages=messages, max_tokens=max_tokens, **more
    )


@pytest.mark.parametrize("cap", [1, 24])
def test_sot_usage_is_the_returned_answer_within_max_tokens(
    client: OpenAI, served: Served, cap: int
) -> None:
    whole = _ask(client, cap)
    content = whole.choices[0].message.content or ""
    assert whole.usage.completion_tokens == _tokens(served, content) <= cap
    assert 0 < len(content) and whole.choices[0].finish_reason == "length"
    nodes = (whole.model_extra or {})["parafill"]["nodes"]
    assert sum(n["tokens"] for n in nodes) > whole.usage.completion_tokens  # the skeleton's
    chunks = list(_ask(client, cap, stream=True, stream_options={"include_usage": True}))
    texts = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(texts) == content
    assert [c for c in chunks if c.choices][-1].choices[0].finish_reason == "length"
    assert chunks[-1].usage == whole.usage
