"""A completions prompt of token ids outside the vocabulary is a 400 at the server, before the
engine sees it, while other clients' streams run on undisturbed; error messages name the real
cause, never "unhandled errors in a TaskGroup"."""

from __future__ import annotations

import json
import sys
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
from conftest import KEY, MODEL, Served

from parafill.backends.base import BackendError, Sampling
from parafill.errors import real_error

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup, ExceptionGroup

AUTH = {"authorization": f"Bearer {KEY}"}
PROMPTS = ["The three primary colors are", "A compiler turns source code into"]
N = 24
BAD = [[49152], [-3], [2**70], [12, 49152, 7]]


async def _reference(served: Served, ids: list[int]) -> str:
    parts = [c.text async for c in served.backend.stream_ids(ids, Sampling(max_tokens=N))]
    return "".join(parts)


def _events(lines: list[str]) -> list[str]:
    return [ln.removeprefix("data: ") for ln in lines if ln.startswith("data: ")]


def _text_of(events: list[str]) -> tuple[str, str | None]:
    assert events[-1] == "[DONE]"
    bodies = [json.loads(e) for e in events[:-1]]
    assert not [b for b in bodies if "error" in b], bodies
    text = "".join(b["choices"][0]["text"] for b in bodies if b["choices"])
    finishes = [f for b in bodies if b["choices"] and (f := b["choices"][0].get("finish_reason"))]
    return text, finishes[-1]


def _bad_request(served: Served, ids: list[int], stream: bool) -> None:
    body = {"model": MODEL, "prompt": ids, "max_tokens": 4, "stream": stream}
    r = httpx.post(f"{served.url}/completions", json=body, headers=AUTH, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["code"], err["type"], err["param"]) == (
        "invalid_value",
        "invalid_request_error",
        "prompt",
    )
    assert "prompt has token ids outside the vocabulary (0..49151)" in err["message"]
    assert str([t for t in ids if not 0 <= t < 49152][0]) in err["message"]


def test_bad_ids_are_400s_and_other_streams_finish(served: Served) -> None:
    tok = served.backend.tokenizer
    ids = [list(tok.encode(p, add_special_tokens=False)) for p in PROMPTS]
    want = [served.portal.call(_reference, served, i) for i in ids]
    body = {"model": MODEL, "max_tokens": N, "temperature": 0, "stream": True}
    with ExitStack() as stack:
        streams = [
            stack.enter_context(
                httpx.stream(
                    "POST",
                    f"{served.url}/completions",
                    json={**body, "prompt": i},
                    headers=AUTH,
                    timeout=120,
                )
            )
            for i in ids
        ]
        lines = [r.iter_lines() for r in streams]
        # each good stream has sent its first text: it is in the engine while the bad ones come
        heads = [[next(ln for ln in it if ln.startswith("data: "))] for it in lines]
        for bad in BAD:
            for stream in (False, True):
                _bad_request(served, bad, stream)
        got = [_text_of(_events(head + list(it))) for head, it in zip(heads, lines, strict=True)]
    assert got == [(w, "length") for w in want]


def test_error_messages_unwrap_exception_groups() -> None:
    inner = BackendError("prompt has token ids outside the vocabulary (0..9): 10")
    group = BaseExceptionGroup("unhandled errors in a TaskGroup", [ExceptionGroup("x", [inner])])
    assert real_error(group) is inner
    assert real_error(inner) is inner


def _refuse(*args: Any, **kwargs: Any) -> int:
    raise ValueError("refused for this test")


@pytest.mark.parametrize("stream", [False, True])
def test_a_failed_generation_names_its_cause(
    served: Served, stream: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refusal from inside the engine (injected: the server checks everything it knows of)
    travels through the choices' task group; the answer names it, not the ExceptionGroup."""
    monkeypatch.setattr(served.backend.engine, "submit", _refuse)
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 4, "stream": stream, "n": 2}
    r = httpx.post(f"{served.url}/completions", json=body, headers=AUTH, timeout=60)
    if stream:
        assert r.status_code == 200
        events = _events(r.text.splitlines())
        assert events[-1] == "[DONE]"
        err = json.loads(events[-2])["error"]
    else:
        assert r.status_code == 500
        err = r.json()["error"]
    assert err["message"] == "generation failed: refused for this test"
    assert err["type"] == "server_error"
