"""`parafill serve` closes a connection whose request head does not arrive in time (uvicorn has
no such timeout of its own: 64 half-sent requests would hold 64 connections forever), while a
request whose head arrived may take as long as it needs. A real uvicorn on 127.0.0.1 with the
CLI's settings, a 1 s head timeout, and raw sockets."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import anyio
import pytest
import uvicorn
from conftest import free_port
from starlette.types import Receive, Scope, Send
from typer.testing import CliRunner

from parafill.cli import app
from parafill.cli.serve import Listen

LIMIT = 1.0  # the head timeout under test, in seconds
SLOW = 2 * LIMIT  # how long the app takes to answer: longer than the head timeout


async def _slow(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await anyio.sleep(SLOW)
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    where = Listen(host="127.0.0.1", port=free_port(), log_level="error", header_timeout=LIMIT)
    server = uvicorn.Server(where.config(_slow))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    try:
        yield where.port
    finally:
        server.should_exit = True
        thread.join(30)


def _closed_after(sock: socket.socket) -> float:
    """Seconds until the server closes `sock` (reads and drops what it sends first)."""
    t0 = time.monotonic()
    sock.settimeout(10 * LIMIT)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for {10 * LIMIT:g} s")
    except ConnectionResetError:
        pass
    return time.monotonic() - t0


REQUEST = b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@pytest.mark.parametrize("sent", [b"GET /v1/models HTTP/1.1\r\nHost: 127", b""])
def test_a_half_sent_request_head_is_closed_in_time(port: int, sent: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(sent)
        assert _closed_after(sock) < 3 * LIMIT


def test_a_slowloris_that_trickles_bytes_is_closed_in_time(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        t0 = time.monotonic()
        for byte in REQUEST[:-4]:  # one byte per 0.1 s: each resets no timer
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.1)
            if time.monotonic() - t0 > 3 * LIMIT:
                pytest.fail("the server still reads a head that has taken 3x its timeout")
        assert time.monotonic() - t0 + _closed_after(sock) < 3 * LIMIT


def test_a_request_whose_head_arrived_may_take_longer(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(REQUEST)  # the app answers after SLOW > LIMIT seconds
        sock.settimeout(10 * LIMIT)
        got = b""
        while not got.endswith(b"\r\n\r\nok") and (part := sock.recv(65536)):
            got += part  # the head and the body may come in two packets
        assert got.startswith(b"HTTP/1.1 200") and got.endswith(b"ok")
        # kept alive; the next request's head is held to the timeout again
        sock.sendall(REQUEST[:20])
        assert _closed_after(sock) < 3 * LIMIT


def test_the_head_timeout_defaults_to_30_seconds() -> None:
    assert Listen().header_timeout == 30.0


@pytest.mark.parametrize("bad", ["0", "-1", "inf"])
def test_a_bad_header_timeout_is_a_clear_error(bad: str) -> None:
    res = CliRunner().invoke(app, ["serve", "--header-timeout", bad])
    assert res.exit_code == 2 and res.exception is not None
    assert "--header-timeout must be seconds > 0" in res.output
