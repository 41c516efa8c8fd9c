"""Huge requests: a body over the server's limit is a 413 before anything parses it (declared
or chunked), a prompt under the limit but over the context is a 400, and while a huge prompt is
tokenized the server keeps answering everyone else — checked by the order in which responses
arrive, never by timing."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace

import httpx
import uvicorn
from conftest import KEY, MODEL, SETTINGS, Served, free_port

from parafill.server import create_app
from parafill.server.limits import DEFAULT_MAX_BODY

AUTH = {"authorization": f"Bearer {KEY}"}
SMALL = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 3, "temperature": 0}


def _chat(text: str) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 4}


def _big_prompt(size: int) -> str:
    return "lorem ipsum dolor sit amet, " * (size // 28)


def _post(served: Served, path: str, body: object, **kw: object) -> httpx.Response:
    return httpx.post(f"{served.url}{path}", headers=AUTH, json=body, timeout=300, **kw)  # type: ignore[arg-type]


def _error(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["type"] == "invalid_request_error"
    return str(err["message"])


def _still_up(served: Served) -> None:
    r = httpx.get(f"{served.url}/models", headers=AUTH, timeout=30)
    assert r.status_code == 200 and r.json()["data"][0]["id"] == MODEL


def test_default_limit_is_a_few_mib() -> None:
    assert SETTINGS.max_body == DEFAULT_MAX_BODY == 4 * 2**20


def test_the_limit_is_a_setting(served: Served) -> None:
    """A second real server over the same backend, allowing 2 KiB bodies."""
    app = create_app(served.backend, replace(SETTINGS, max_body=2048))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    running = served.portal.start_task_soon(server.serve)
    try:
        other = Served(f"http://127.0.0.1:{port}/v1", served.backend, served.portal)
        while not server.started:
            assert not running.done(), running.exception()
            time.sleep(0.01)
        ok = _post(other, "/completions", {**SMALL, "prompt": "x" * 1900})
        assert ok.status_code == 200, ok.text
        msg = _error(
            _post(other, "/completions", {**SMALL, "prompt": "x" * 2048}), 413, "request_too_large"
        )
        assert "over this server's limit of 2048 bytes (2 KiB)" in msg
    finally:
        server.should_exit = True


def test_body_over_the_limit_is_413(served: Served) -> None:
    r = _post(served, "/chat/completions", _chat(_big_prompt(10 * 2**20)))
    msg = _error(r, 413, "request_too_large")
    assert "over this server's limit of 4194304 bytes (4 MiB)" in msg
    _still_up(served)


def test_chunked_body_over_the_limit_is_413(served: Served) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: the server counts as it reads
        yield b'{"model": "%s", "prompt": "' % MODEL.encode()
        for _ in range(10):
            yield b"x" * 2**20
        yield b'"}'

    r = httpx.post(
        f"{served.url}/completions",
        headers={**AUTH, "content-type": "application/json"},
        content=chunks(),
        timeout=300,
    )
    assert "content-length" not in r.request.headers
    assert "over this server's limit" in _error(r, 413, "request_too_large")
    _still_up(served)


def test_key_is_checked_before_the_body_is_read(served: Served) -> None:
    r = httpx.post(f"{served.url}/chat/completions", json=_chat(_big_prompt(10 * 2**20)))
    assert r.status_code == 401


def _tokenizing() -> bool:
    """Whether some thread of this process (the server runs in it) is inside
    `LocalBackend.encode` — the chat template and tokenizer."""
    for top in sys._current_frames().values():
        frame = top
        while frame is not None:
            if frame.f_code.co_qualname == "LocalBackend.encode":
                return True
            frame = frame.f_back
    return False


def _wait_tokenizing(big: Future[httpx.Response]) -> None:
    deadline = time.monotonic() + 120
    while not _tokenizing():
        assert not big.done(), f"the big request ended before it was seen tokenizing: {big}"
        assert time.monotonic() < deadline, "the big request was never seen tokenizing"
        time.sleep(0.005)


def _record(order: list[str], name: str, call: Callable[[], httpx.Response]) -> httpx.Response:
    r = call()
    order.append(name)  # list.append is atomic: the arrival order of the responses
    return r


def test_others_are_answered_while_a_huge_prompt_is_tokenized(served: Served) -> None:
    reference = _post(served, "/completions", SMALL).json()["choices"][0]["text"]
    order: list[str] = []
    big_body = _chat(_big_prompt(DEFAULT_MAX_BODY - 2**16))  # under the limit, over the context
    with ThreadPoolExecutor(3) as pool:
        big = pool.submit(
            _record, order, "big", lambda: _post(served, "/chat/completions", big_body)
        )
        _wait_tokenizing(big)
        models = pool.submit(
            _record, order, "models", lambda: httpx.get(f"{served.url}/models", headers=AUTH)
        )
        small = pool.submit(_record, order, "small", lambda: _post(served, "/completions", SMALL))
        assert models.result().status_code == 200
        assert small.result().json()["choices"][0]["text"] == reference
        assert "big" not in order  # still tokenizing: nothing waited for it
        msg = _error(big.result(), 400, "context_length_exceeded")
    assert order[-1] == "big" and set(order) == {"big", "models", "small"}
    assert "this model's context holds" in msg


def test_refused_requests_do_not_harm_a_running_stream(served: Served) -> None:
    body = {**SMALL, "max_tokens": 24}
    reference = _post(served, "/completions", body).json()["choices"][0]["text"]
    got: list[str] = []
    refused = threading.Event()

    def streamed() -> None:
        with httpx.stream(
            "POST",
            f"{served.url}/completions",
            headers=AUTH,
            json={**body, "stream": True},
            timeout=300,
        ) as r:
            for line in r.iter_lines():
                if not line.startswith("data: {"):
                    continue
                refused.wait(300)  # the refusals happen while this stream is open
                got.append(httpx.Response(200, content=line[6:]).json()["choices"][0]["text"])

    with ThreadPoolExecutor(1) as pool:
        stream = pool.submit(streamed)
        _error(
            _post(served, "/chat/completions", _chat(_big_prompt(10 * 2**20))),
            413,
            "request_too_large",
        )
        _error(
            _post(served, "/completions", {**SMALL, "prompt": _big_prompt(2**20)}),
            400,
            "context_length_exceeded",
        )
        refused.set()
        stream.result()
    assert "".join(got) == reference
    _still_up(served)
