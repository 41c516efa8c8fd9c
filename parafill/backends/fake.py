"""A deterministic fake backend for orchestration tests only (never evidence of generation).

It answers with a scripted reply (or a digest of the prompt), one word per chunk with a fixed
delay, records when each request started and ended, and can fail or hang on demand.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import anyio

from parafill.backends.base import BackendError, Capabilities, Chunk, Request

Script = Callable[[str], str]


@dataclass
class Call:
    prompt: str
    started: float
    ended: float | None = None


@dataclass
class FakeBackend:
    reply: Script = field(default=lambda prompt: f"ok {len(prompt)}")
    delay: float = 0.01  # seconds per chunk
    fail_times: dict[str, int] = field(default_factory=dict)  # prompt substring -> failures
    hang_on: tuple[str, ...] = ()  # prompt substrings that never finish
    calls: list[Call] = field(default_factory=list)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(batched=True, max_concurrency=1024)

    async def stream(self, request: Request) -> AsyncIterator[Chunk]:
        prompt = request.messages[-1].content
        call = Call(prompt, time.perf_counter())
        self.calls.append(call)
        try:
            for key, left in self.fail_times.items():
                if key in prompt and left > 0:
                    self.fail_times[key] = left - 1
                    raise BackendError(f"injected failure for {key!r}")
            if any(k in prompt for k in self.hang_on):
                await anyio.sleep_forever()
            words = self.reply(prompt).split(" ")
            for i, word in enumerate(words[: request.sampling.max_tokens]):
                await anyio.sleep(self.delay)
                yield Chunk(word if i == 0 else " " + word, tokens=1)
            yield Chunk("", finish_reason="stop")
        finally:
            call.ended = time.perf_counter()
