"""A server's Retry-After is honoured only up to `retry_after_max`: one asking for an hour (or
for `inf`) does not stall the run, and the give-up error says the wait was cut. Both of its
forms are read: seconds and an HTTP date."""

from __future__ import annotations

import random
import re
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import anyio
import pytest
from fault_server import Reply, fault_server

from parafill.backends.base import BackendError, Request, complete
from parafill.backends.openai_http import OpenAIBackend, OpenAIConfig
from parafill.backends.openai_sse import retry_after

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


async def test_giving_up_says_the_wait_was_capped() -> None:
    busy = Reply(429, headers=(("Retry-After", "3600"),))
    with anyio.fail_after(30):
        async with (
            fault_server(default=busy) as server,
            _backend(server.url, retry_after_max=0) as b,
        ):
            with pytest.raises(BackendError, match="gave up after 3 attempts") as err:
                await complete(b, Request.chat("hi"))
    assert "the server asked to wait 3600 s; waited 0 s, retry_after_max" in str(err.value)
    assert len(server.requests) == 3


def test_the_cap_defaults_to_a_minute_and_must_be_finite() -> None:
    assert OpenAIConfig(base_urls=("http://x",), model="m").retry_after_max == 60.0
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="retry_after_max"):
            OpenAIConfig(base_urls=("http://x",), model="m", retry_after_max=bad)


# --- Retry-After as an HTTP date (RFC 9110: delay-seconds or an HTTP-date) ----------------------

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        ("Sat, 01 Mar 2025 12:00:30 GMT", 30.0),  # IMF-fixdate
        ("Saturday, 01-Mar-25 12:02:00 GMT", 120.0),  # the obsolete RFC 850 form
        ("Sat Mar  1 12:00:05 2025", 5.0),  # asctime (no zone: GMT)
        ("Sat, 01 Mar 2025 11:59:00 GMT", 0.0),  # already past: retry now
    ],
)
def test_retry_after_takes_seconds_or_an_http_date(value: str, seconds: float) -> None:
    assert retry_after(value, now=NOW) == seconds


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "nan", "Sat, 99 Foo 2025"])
def test_a_retry_after_that_says_nothing_usable_falls_back_to_backoff(value: str | None) -> None:
    assert retry_after(value, now=NOW) is None


async def test_an_http_date_retry_after_is_honoured_and_capped() -> None:
    in_an_hour = format_datetime(datetime.now(timezone.utc) + timedelta(hours=1), usegmt=True)
    busy = Reply(429, headers=(("Retry-After", in_an_hour),))
    with anyio.fail_after(30):
        async with (
            fault_server(default=busy) as server,
            _backend(server.url, retry_after_max=0) as b,
        ):
            with pytest.raises(BackendError, match="gave up after 3 attempts") as err:
                await complete(b, Request.chat("hi"))
    assert re.search(r"the server asked to wait 3[56]\d\d(\.\d+)? s; waited 0 s", str(err.value))


async def test_an_http_date_retry_after_is_waited() -> None:
    # HTTP dates have whole seconds: two seconds ahead is a wait of more than one
    soon = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=2), usegmt=True)
    script = [Reply(429, headers=(("Retry-After", soon),))]
    with anyio.fail_after(30):
        async with fault_server(script) as server, _backend(server.url) as b:
            text, _, _ = await complete(b, Request.chat("hi"))
    assert text == "Hello world" and len(server.requests) == 2
    assert server.gaps()[0] > 0.9  # not the 0.01-0.05 s backoff
