"""A client that leaves before its whole (non-streaming) response is ready cancels the
generation, like a stream: the engine is idle again at once, not after decoding to the end for
nobody. The plain model and `parafill-sot` both."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest
from conftest import KEY, MODEL, Served

from parafill.server import sot

AUTH = {"authorization": f"Bearer {KEY}"}


def _wait(served: Served, busy: bool, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if served.idle() != busy:
            return True
        time.sleep(0.02)
    return served.idle() != busy


def _send(served: Served, body: dict[str, object]) -> socket.socket:
    """A whole request on a raw connection whose response is never read."""
    url = httpx.URL(served.url)
    data = json.dumps(body).encode()
    head = (
        f"POST {url.path}/chat/completions HTTP/1.1\r\nhost: {url.host}\r\n"
        f"authorization: Bearer {KEY}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(data)}\r\n\r\n"
    )
    sock = socket.create_connection((url.host, url.port or 80), timeout=30)
    sock.sendall(head.encode() + data)
    return sock


@pytest.mark.parametrize("model", [MODEL, sot.NAME])
def test_an_abandoned_whole_response_stops_decoding(served: Served, model: str) -> None:
    assert _wait(served, False, 30)
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "List ways to stay healthy, in detail."}],
        "max_tokens": 400,
        "temperature": 0,
    }
    sock = _send(served, body)
    assert _wait(served, True, 30), "the request never reached the engine"
    time.sleep(0.3)
    steps = served.backend.engine.steps
    sock.close()  # the client leaves before its answer is ready
    # 400 tokens (or a skeleton and its points) take far longer than the 5 s allowed here
    assert _wait(served, False, 5), "the engine still decodes for a client that left"
    assert served.backend.engine.steps - steps < 100
