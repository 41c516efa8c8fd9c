"""A server's Retry-After is honoured only up to `retry_after_max`: one asking for an hour (or
for `inf`) does not stall the run, and the give-up error says the wait was cut. Both of its
forms are read: seconds and an HTTP date."""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import anyio
import pytest
from fault_server import Reply, fault_server

from parafill.backends.base import BackendError, Request, complete
from parafill.backends.openai_http import OpenAIBackend, OpenAIConfig

pytestmark = pytest.mark.anyio


def _backend(url: str, **overrides: object) -> OpenAIBackend:
    fast = {"timeout": 5.0, "max_retries": 2, "backoff_base": 0.01, "backoff_cap": 0.05}
    cfg = OpenAIConfig(base_urls=(url,), model="test", **{**fast, **overrides})  # type: ignore[arg-type]
    return OpenAIBackend(cfg, rng=random.Random(0))


@pytest.mark.parametrize("asked", ["3600", "inf", "1e400"])
async def test_a_huge_retry_after_is_cut_to_the_cap(asked: str) -> None:
    script = [Reply(429, headers=(("Retry-After", asked),))]
    with anyio.fail_after(30):  # a guard against the uncapped wait, not a measurement
        async with fault_server(script) as server, _backend(server.url, retry_after_max=0.05) as b:
            text, _, _ = await complete(b, Request.chat("hi"))
    assert text == "Hello world" and len(server.requests) == 2


def _in_an_hour() -> str:
    return format_datetime(datetime.now(timezone.utc) + timedelta(hours=1), usegmt=True)


@pytest.mark.parametrize(
    ("asked", "said"),
    [
        (lambda: "3600", r"asked to wait 3600 s; waited 0 s, retry_after_max"),
        (_in_an_hour, r"asked to wait 3[56]\d\d(\.\d+)? s; waited 0 s"),  # the HTTP-date form
    ],
    ids=["seconds", "http-date"],
)
async def test_giving_up_says_the_wait_was_capped(asked: Callable[[], str], said: str) -> None:
    busy = Reply(429, headers=(("Retry-After", asked()),))
    with anyio.fail_after(30):
        async with (
            fault_server(default=busy) as server,
            _backend(server.url, retry_after_max=0) as b,
        ):
            with pytest.raises(BackendError, match="gave up after 3 attempts") as err:
                await complete(b, Request.chat("hi"))
    assert re.search(said, str(err.value))
    assert len(server.requests) == 3


async def test_an_http_date_retry_after_is_waited() -> None:
    # HTTP dates have whole seconds: two seconds ahead is a wait of more than one
    soon = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=2), usegmt=True)
    script = [Reply(429, headers=(("Retry-After", soon),))]
    with anyio.fail_after(30):
        async with fault_server(script) as server, _backend(server.url) as b:
            text, _, _ = await complete(b, Request.chat("hi"))
    assert text == "Hello world" and len(server.requests) == 2
    assert server.gaps()[0] > 0.9  # not the 0.01-0.05 s backoff
