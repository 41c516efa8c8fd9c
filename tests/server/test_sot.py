"""`parafill-sot` over HTTP: the answer's paragraphs are the skeleton's points, the extra
`parafill` field is consistent with the answer and usage, and streaming yields the same text."""

from __future__ import annotations

import pytest
from conftest import KEY, Served
from openai import OpenAI
from openai.types.chat import ChatCompletion

from parafill.backends.base import Message

QUESTION = "What are the most effective ways to manage stress?"
N = 160  # the whole answer's cap: room for every point (each gets a share of it)


@pytest.fixture(scope="module")
def client(served: Served) -> OpenAI:
    return OpenAI(base_url=served.url, api_key=KEY, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def whole(client: OpenAI) -> ChatCompletion:
    return client.chat.completions.create(
        model="parafill-sot", messages=[{"role": "user", "content": QUESTION}], max_tokens=N
    )


def test_sot_answer_matches_its_skeleton(whole: ChatCompletion) -> None:
    extra = (whole.model_extra or {})["parafill"]
    points = extra["points"]
    assert 2 <= len(points) <= 4  # the test server caps points at 4
    answer = whole.choices[0].message.content or ""
    paragraphs = answer.split("\n\n")
    assert len(paragraphs) == len(points)
    for k, (para, point) in enumerate(zip(paragraphs, points, strict=True), 1):
        assert para.startswith(f"{k}. {point}:")
        assert len(para) > len(f"{k}. {point}:") + 1  # the point was expanded
    assert extra["skeleton"].startswith("1.")
    assert extra["notes"] == [f"skeleton: {len(points)} points"]


def test_sot_nodes_and_usage_agree(whole: ChatCompletion, served: Served) -> None:
    extra = (whole.model_extra or {})["parafill"]
    nodes = extra["nodes"]
    ids = [n["id"] for n in nodes]
    assert ids == ["skeleton"] + [f"point-{k}" for k in range(1, len(extra["points"]) + 1)]
    assert all(0 < n["tokens"] for n in nodes)
    assert sum(n["tokens"] for n in nodes[1:]) <= N  # the points share max_tokens
    assert whole.usage is not None
    content = whole.choices[0].message.content or ""
    returned = served.backend.tokenizer.encode(content, add_special_tokens=False)
    assert whole.usage.completion_tokens == len(returned) <= N  # the answer, not the skeleton
    prompt = served.backend.encode((Message("user", QUESTION),))
    assert whole.usage.prompt_tokens == len(prompt)
    assert 0 < max(n["seconds"] for n in nodes) <= extra["seconds"]
    assert extra["forward_passes"] < sum(n["tokens"] for n in nodes)  # points shared passes


def test_sot_stream_sends_the_same_answer_point_by_point(
    client: OpenAI, whole: ChatCompletion
) -> None:
    chunks = list(
        client.chat.completions.create(
            model="parafill-sot",
            messages=[{"role": "user", "content": QUESTION}],
            max_tokens=N,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    texts = [c.choices[0].delta.content for c in chunks if c.choices]
    assert "".join(t or "" for t in texts) == whole.choices[0].message.content
    points = (whole.model_extra or {})["parafill"]["points"]
    assert len([t for t in texts if t]) == len(points)  # one event per point, in order
    last = [c for c in chunks if c.choices][-1]
    assert last.choices[0].finish_reason == whole.choices[0].finish_reason
    assert (last.model_extra or {})["parafill"]["points"] == points
    assert chunks[-1].usage == whole.usage
