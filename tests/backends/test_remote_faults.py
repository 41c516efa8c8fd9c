"""OpenAIBackend against servers that misbehave after accepting the request: keep-alive comments
and nothing else (the request deadline ends it), errors that a retry cannot fix (sent once),
and 200 bodies that are not an event stream or whose events are not JSON (quoted, bounded)."""

from __future__ import annotations

import json
import random

import anyio
import pytest
from fault_server import Reply, fault_server

from parafill.backends.base import BackendError, Request, complete
from parafill.backends.openai_http import OpenAIBackend, OpenAIConfig

pytestmark = pytest.mark.anyio

GUARD = 20.0  # seconds: a guard against a hang, not a measurement


def _backend(url: str, **overrides: object) -> OpenAIBackend:
    fast = {"timeout": 5.0, "max_retries": 3, "backoff_base": 0.01, "backoff_cap": 0.05}
    cfg = OpenAIConfig(base_urls=(url,), model="test", **{**fast, **overrides})  # type: ignore[arg-type]
    return OpenAIBackend(cfg, rng=random.Random(0))


# --- the request deadline ----------------------------------------------------------------------


async def test_keep_alive_comments_alone_end_at_the_deadline() -> None:
    # each comment resets the per-read timeout (5 s), so only the deadline can end this
    with anyio.fail_after(GUARD):
        async with (
            fault_server(default=Reply(keepalive=0.05)) as server,
            _backend(server.url, deadline=1.0) as b,
        ):
            with pytest.raises(BackendError, match=r"127\.0\.0\.1.*within the 1 s deadline") as err:
                await complete(b, Request.chat("hi"))
            await server.hung_up.wait()  # the connection was closed, not left streaming
    assert "received 0 chunks" in str(err.value) and "SSE comments" in str(err.value)
    assert err.value.retryable and len(server.requests) == 1


async def test_the_deadline_covers_retries_and_their_waits() -> None:
    cfg = {"deadline": 1.0, "max_retries": 1000, "backoff_base": 0.1, "backoff_cap": 0.2}
    with anyio.fail_after(GUARD):
        async with fault_server(default=Reply(503)) as server, _backend(server.url, **cfg) as b:
            with pytest.raises(BackendError, match="within the 1 s deadline") as err:
                await complete(b, Request.chat("hi"))
    assert "last: HTTP 503" in str(err.value) and err.value.retryable
    assert 1 < len(server.requests) < 1000


def test_the_deadline_defaults_to_ten_minutes_and_can_be_turned_off() -> None:
    assert OpenAIConfig(("http://x",), "m").deadline == 600.0
    assert OpenAIConfig(("http://x",), "m", deadline=None).deadline is None
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="deadline"):
            OpenAIConfig(("http://x",), "m", deadline=bad)


# --- errors a retry cannot fix -----------------------------------------------------------------

CONTEXT = {
    "message": "This model's maximum context length is 2048 tokens; you asked for 4100.",
    "type": "invalid_request_error",
    "param": "messages",
    "code": "context_length_exceeded",
}


@pytest.mark.parametrize(
    "error",
    [
        CONTEXT,
        {"message": "too long", "code": "context_length_exceeded"},
        {"message": "bad top_p", "type": "invalid_request_error"},
        {"message": "too long", "type": "exceed_context_size_error", "code": 400},  # llama.cpp
        {"message": "too large", "type": "BadRequestError", "code": 413},
    ],
)
async def test_an_error_event_a_retry_cannot_fix_is_sent_once(error: dict[str, object]) -> None:
    refusal = Reply(error=error)
    async with fault_server(default=refusal) as server, _backend(server.url) as b:
        with pytest.raises(BackendError, match="not retried") as err:
            await complete(b, Request.chat("hi"))
    assert str(error["message"])[-30:] in str(err.value) and not err.value.retryable
    assert server.served.count(refusal) == 1 and len(server.requests) == 1


async def test_a_transient_error_event_is_retried() -> None:
    script = [Reply(error={"message": "overloaded", "code": 503}), Reply(error={"type": "x"})]
    async with fault_server(script) as server, _backend(server.url) as b:
        text, _, _ = await complete(b, Request.chat("hi"))
    assert text == "Hello world" and len(server.requests) == 3


@pytest.mark.parametrize(
    ("reply", "retried"),
    [
        (Reply(408), True),
        (Reply(409), True),
        (Reply(429), True),
        (Reply(503), True),
        (Reply(400), False),
        (Reply(404), False),
        (Reply(413), False),
        (Reply(422), False),
        (Reply(500, error=CONTEXT), False),  # the body says what the status does not
    ],
)
async def test_which_http_errors_are_retried(reply: Reply, retried: bool) -> None:
    async with fault_server([reply]) as server, _backend(server.url) as b:
        if retried:
            text, _, _ = await complete(b, Request.chat("hi"))
            assert text == "Hello world"
        else:
            with pytest.raises(BackendError, match=f"HTTP {reply.status} \\(not retried\\)"):
                await complete(b, Request.chat("hi"))
    assert len(server.requests) == (2 if retried else 1)


# --- bodies that are not a stream --------------------------------------------------------------

PAGE = (
    "<!doctype html>\n<html><head><title>Sign in - Example Proxy</title></head>\n"
    + "<body>"
    + "<p>lorem ipsum: dolor</p>\n" * 400
    + "</body></html>\n"
)
COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}}],
}


@pytest.mark.parametrize(
    ("body", "content_type", "quoted"),
    [
        (PAGE, "text/html; charset=utf-8", "<title>Sign in - Example Proxy</title>"),
        (json.dumps(COMPLETION), "application/json", '"object": "chat.completion"'),
    ],
)
async def test_a_200_body_that_is_not_a_stream_is_quoted(
    body: str, content_type: str, quoted: str
) -> None:
    async with fault_server(default=Reply(body=body, content_type=content_type)) as server:
        async with _backend(server.url) as b:
            with pytest.raises(BackendError, match="not an SSE stream") as err:
                await complete(b, Request.chat("hi"))
    message = str(err.value)
    assert content_type in message and quoted in message and "0 chunks" not in message
    assert len(message) < 600  # an excerpt, not the whole page
    assert not err.value.retryable and len(server.requests) == 1


async def test_an_event_that_is_not_json_is_quoted() -> None:
    body = "data: <html><body>Bad gateway" + "!" * 5000 + "\n\n"
    async with fault_server(default=Reply(body=body)) as server, _backend(server.url) as b:
        with pytest.raises(BackendError, match="event data is not JSON") as err:
            await complete(b, Request.chat("hi"))
    assert "<html><body>Bad gateway" in str(err.value) and len(str(err.value)) < 800
    assert len(server.requests) == 4  # retried: a proxy's hiccup may pass
