"""The API-key gate refuses a request that sends `Authorization` more than once (401, saying
so), whichever of the two holds the key: neither header may win. Checked on the gate alone
and on a real uvicorn server on 127.0.0.1 (raw bytes, so both headers reach it)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from conftest import free_port
from starlette.types import Receive, Scope, Send

from parafill.server.errors import APIKeyGate

pytestmark = pytest.mark.anyio
KEY = "sk-gate"
BOTH = [
    [("authorization", f"Bearer {KEY}"), ("authorization", "Bearer wrong")],
    [("authorization", "Bearer wrong"), ("authorization", f"Bearer {KEY}")],
    [("authorization", f"Bearer {KEY}"), ("authorization", f"Bearer {KEY}")],
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _ok(scope: Scope, receive: Receive, send: Send) -> None:
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


def _gated() -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=APIKeyGate(_ok, KEY))
    return httpx.AsyncClient(transport=transport, base_url="http://gate")


async def test_one_right_key_passes_the_gate() -> None:
    async with _gated() as client:
        got = await client.get("/v1/models", headers={"authorization": f"Bearer {KEY}"})
    assert (got.status_code, got.text) == (200, "ok")


@pytest.mark.parametrize("headers", BOTH)
async def test_two_authorization_headers_are_refused(headers: list[tuple[str, str]]) -> None:
    async with _gated() as client:
        got = await client.get("/v1/models", headers=headers)
    assert got.status_code == 401
    error = got.json()["error"]
    assert "more than one Authorization header" in error["message"]
    assert (error["type"], error["code"]) == ("authentication_error", "invalid_api_key")


@pytest.fixture(scope="module")
def gated_server() -> Iterator[int]:
    port = free_port()
    config = uvicorn.Config(APIKeyGate(_ok, KEY), host="127.0.0.1", port=port, log_level="error")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(30)


def _raw_get(port: int, header_lines: list[str]) -> tuple[int, bytes]:
    head = ["GET /v1/models HTTP/1.1", "Host: 127.0.0.1", "Connection: close", *header_lines]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.partition(b"\r\n\r\n")[2]


def test_a_real_server_refuses_two_authorization_headers(gated_server: int) -> None:
    status, body = _raw_get(gated_server, [f"Authorization: Bearer {KEY}"])
    assert (status, body) == (200, b"ok")
    for first, second in (("wrong", KEY), (KEY, "wrong")):
        lines = [f"Authorization: Bearer {first}", f"Authorization: Bearer {second}"]
        status, body = _raw_get(gated_server, lines)
        assert status == 401, body
        assert "more than one Authorization header" in json.loads(body)["error"]["message"]
