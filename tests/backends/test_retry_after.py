"""A server's Retry-After is honoured only up to `retry_after_max`: one asking for an hour (or
for `inf`) does not stall the run, and the give-up error says the wait was cut."""

from __future__ import annotations

import random

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
