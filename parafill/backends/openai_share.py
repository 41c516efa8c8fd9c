"""One long common prompt prefix shared across llama.cpp `llama-server`'s parallel slots.

Each slot of llama-server keeps its own KV cache, so sibling requests sent at once (the points
of a skeleton: the question and the whole outline, then "Write only point k") are each
prefilled in full, one slot apiece. The server also keeps a prompt cache in host memory
(`--cache-ram`, on by default): a slot that starts a task can load the cached prompt that best
matches it, and every idle slot is saved into that cache whenever a task starts. A loaded entry
is moved out of the cache, so one saved copy serves one slot; an idle slot holding the prefix
is saved again at every task start, so it serves them all. Hence, for a group of requests that
arrive together and share a long prefix:

1. the prefix (cut after its last newline, so the tokens line up) is prefilled with a 1-token
   request pinned (`id_slot`) to an idle slot W, which then stays idle;
2. a 1-token request on another idle slot starts a task, so W is saved to the cache;
3. each request of the group is pinned to its own idle slot (not W); starting there, it loads
   W's prefix from the cache and prefills only its own tail.

Idle slots come from `GET /slots`; with too few of them (a busy server) or anything failing on
the way, the requests go out unpinned as before. Output is unchanged in kind (the server's own
prompt caching); which tokens a llama-server writes greedily can depend on its batch anyway.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio
import httpx

from parafill.backends.base import Message, render_messages

MIN_CHARS = 200  # a shorter common prefix costs less to prefill than the two extra requests
WINDOW = 0.005  # seconds the first request of a group waits for its siblings
SETUP = 10.0  # seconds the prefix and cache requests may take; then the group goes unpinned


@dataclass
class _Ask:
    head: tuple[Message, ...]  # the messages before the last user message
    text: str  # the last user message
    slot: int | None = None
    ready: anyio.Event = field(default_factory=anyio.Event)


def split(messages: Sequence[Message]) -> tuple[tuple[Message, ...], str] | None:
    """(the messages before the last user message, its text); None when the chat does not
    end in a user message (a trailing assistant prefix is not part of the shared prompt)."""
    msgs = list(messages)
    while msgs and msgs[-1].role == "assistant":
        msgs.pop()
    if not msgs or msgs[-1].role != "user":
        return None
    return tuple(msgs[:-1]), msgs[-1].content


def common_prefix(texts: Sequence[str]) -> str:
    """The texts' longest common prefix, cut after its last newline."""
    first, last = min(texts), max(texts)
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    return first[: first.rfind("\n", 0, n) + 1]


class SlotShare:
    """Pins groups of requests with a long common prefix to llama-server slots that load the
    prefix prefilled once (see the module text). `slot(messages)` is awaited per request."""

    def __init__(self, client: httpx.AsyncClient, root: str, model: str, headers: dict[str, str]):
        self._client, self._root, self._model = client, root.rstrip("/"), model
        self._headers = headers
        self._pending: list[_Ask] = []
        self._lock = anyio.Lock()  # one group's pinning at a time
        self.shared = 0  # groups whose prefix was shared (for tests and benchmarks)
        self._disabled = False  # the server has no /slots (or refused a pinned request)

    async def slot(self, messages: Sequence[Message]) -> int | None:
        """The slot to pin this request to; None: send it as usual."""
        parts = split(messages)
        if parts is None or self._disabled:
            return None
        ask = _Ask(*parts)
        self._pending.append(ask)
        if len(self._pending) == 1:  # the first of a window: gather its siblings, then lead
            try:
                await anyio.sleep(WINDOW)
            finally:
                group, self._pending = self._pending, []
                with anyio.CancelScope(shield=True), anyio.move_on_after(SETUP):
                    await self._share(group)
                for a in group:
                    a.ready.set()
        await ask.ready.wait()
        return ask.slot

    async def _share(self, group: list[_Ask]) -> None:
        async with self._lock:
            for members in _groups(group):
                await self._share_one(members)

    async def _share_one(self, members: list[_Ask]) -> None:
        prefix = common_prefix([a.text for a in members])
        if self._disabled:
            return
        try:
            await self._pin(members, prefix)
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            for a in members:
                a.slot = None

    async def _pin(self, members: list[_Ask], prefix: str) -> None:
        got = await self._client.get(f"{self._root}/slots", headers=self._headers)
        if got.status_code != 200:
            self._disabled = True
            return
        idle = [int(s["id"]) for s in got.json() if not s.get("is_processing")]
        if len(idle) < len(members) + 1:
            return  # a busy server: no room to keep a slot idle for the prefix
        keep, rest = idle[0], idle[1:]
        await self._one(list(members[0].head) + [Message("user", prefix)], keep)
        await self._one([Message("user", ".")], rest[0])  # starts a task: W is cached
        for a, slot in zip(members, rest, strict=False):
            a.slot = slot
        self.shared += 1

    async def _one(self, messages: list[Message], slot: int) -> None:
        body = {"model": self._model, "messages": render_messages(messages), "max_tokens": 1,
                "temperature": 0.0, "id_slot": slot, "cache_prompt": True}  # fmt: skip
        url = f"{self._root}/v1/chat/completions"
        got = await self._client.post(url, content=json.dumps(body), headers=self._headers)
        if got.status_code != 200:
            self._disabled = True
            raise ValueError(f"llama-server refused a pinned request: {got.status_code}")


def _groups(asks: list[_Ask]) -> list[list[_Ask]]:
    """Requests with the same leading messages whose last messages share MIN_CHARS or more
    (after the newline cut), two or more: the points of two questions sent in the same window
    (a batch job) make two groups."""
    by_head: dict[tuple[Message, ...], list[_Ask]] = {}
    for a in asks:
        by_head.setdefault(a.head, []).append(a)
    out: list[list[_Ask]] = []
    for same in by_head.values():
        same.sort(key=lambda a: a.text)  # texts with a long common prefix end up side by side
        run = [same[0]]
        for a in same[1:]:
            if len(common_prefix([run[0].text, a.text])) >= MIN_CHARS:
                run.append(a)
                continue
            out += [run] if len(run) >= 2 else []
            run = [a]
        out += [run] if len(run) >= 2 else []
    return out
