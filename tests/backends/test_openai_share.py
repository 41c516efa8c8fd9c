"""Sibling requests with a long common prefix on llama.cpp's `llama-server` (openai_share.py):
with `share_prefix` the prefix is prefilled once and every sibling prefills only its own tail
(the server's own log counts what each request prefilled), against the same siblings unshared;
short prefixes, lone requests and a server without `/slots` go out unpinned."""

from __future__ import annotations

import json
import re
from pathlib import Path

import anyio
import httpx
import pytest
from llama_server import LlamaServer

from parafill.backends.base import Message, Request, Sampling, complete
from parafill.backends.openai_http import OpenAIBackend, OpenAIConfig
from parafill.backends.openai_share import SlotShare, _Ask, _groups, common_prefix

pytestmark = pytest.mark.anyio
_PREFILLED = re.compile(r"prompt eval time =\s+[0-9.]+ ms /\s+(\d+) tokens")
OUTLINE = "\n".join(f"{k}. {p}" for k, p in enumerate(
    ["Set clear goals for each week", "Plan every day the evening before",
     "Remove distractions while working", "Take short breaks between tasks"], 1))  # fmt: skip


def _points(question: str) -> list[Request]:
    """Three skeleton-point prompts: the question and the outline in common, then the point."""
    head = f"Question: {question}\n\nThe answer has these points:\n{OUTLINE}\n\n"
    return [Request((Message("system", "You are a helpful assistant."),
                     Message("user", f"{head}Write only point {k} in 1~2 sentences.")),
                    Sampling(max_tokens=8, temperature=0.0)) for k in (1, 2, 3)]  # fmt: skip


def _prefilled(log: Path, since: int) -> list[int]:
    return [int(n) for n in _PREFILLED.findall(log.read_text(errors="replace")[since:])]


async def _logged(log: Path, since: int, want: int) -> list[int]:
    """The server's prefill lines since `since`, once `want` of them are there (llama-server
    writes a request's timings after its response is sent; reading at once raced it) or after
    10 s with what there is (the test's count assertion then says what was missing)."""
    for _ in range(200):
        got = _prefilled(log, since)
        if len(got) >= want:
            break
        await anyio.sleep(0.05)
    return got


async def _together(
    server: LlamaServer, requests: list[Request], share: bool
) -> tuple[list[int], int]:
    cfg = OpenAIConfig((server.url,), server.model, timeout=120.0, share_prefix=share)
    since = len(server.log.read_text(errors="replace"))
    async with OpenAIBackend(cfg) as backend:
        async with anyio.create_task_group() as tg:
            for r in requests:
                tg.start_soon(complete, backend, r)
        shared = backend._share.shared if backend._share else 0
    # each request's line; shared: the prefix request and the cache trigger's too
    return await _logged(server.log, since, len(requests) + (2 if shared else 0)), shared


async def test_siblings_prefill_only_their_own_tails_when_shared(llama_binary: LlamaServer) -> None:
    plain, none = await _together(llama_binary, _points("How can a busy nurse manage time?"), False)
    shared, one = await _together(llama_binary, _points("How can a busy parent manage time?"), True)
    assert (none, one) == (0, 1)
    assert len(plain) == 3 and len(shared) == 5  # + the prefix once and the cache trigger
    tails = sorted(shared)[:3]  # the three siblings (the prefix request prefills the most)
    assert max(tails) < min(plain) / 3, (plain, shared)
    assert max(shared) + sum(tails) < 0.6 * sum(plain), (plain, shared)  # prefix once + tails


async def test_short_prefixes_and_servers_without_slots_go_unpinned() -> None:
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(404)

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        share = SlotShare(client, "http://127.0.0.1:1", "m", {})
        short = [Message("user", f"Say {k}.") for k in range(3)]
        got = await _gather(share, [[m] for m in short])
        assert got == [None] * 3 and seen == []  # nothing in common worth sharing: no call
        long = [[Message("user", "x" * 300 + f"\nitem {k}")] for k in range(3)]
        assert await _gather(share, long) == [None] * 3 and seen == ["/slots"]
        assert await _gather(share, long) == [None] * 3 and seen == ["/slots"]  # not asked again


async def _gather(share: SlotShare, chats: list[list[Message]]) -> list[int | None]:
    out: list[int | None] = [None] * len(chats)

    async def one(i: int) -> None:
        out[i] = await share.slot(chats[i])

    async with anyio.create_task_group() as tg:
        for i in range(len(chats)):
            tg.start_soon(one, i)
    return out


def test_two_questions_sent_together_make_two_groups() -> None:
    """A batch job's window can hold the points of several questions (same system message):
    each question's points are a group of their own, a lone request none."""
    system = (Message("system", "You are a helpful assistant."),)
    questions = ("How do I sleep better?", "How can I run faster?")
    asks = [_Ask(system, _points(q)[k].messages[1].content) for k in range(3) for q in questions]
    asks.append(_Ask(system, "Say hello."))
    groups = _groups(asks)
    assert sorted(len(g) for g in groups) == [3, 3]
    assert all(len({a.text.split("\n")[0] for a in g}) == 1 for g in groups)  # one question


def test_common_prefix_ends_after_a_newline() -> None:
    assert common_prefix(["ab\ncd\nef1", "ab\ncd\nef2"]) == "ab\ncd\n"
    assert common_prefix(["abc", "abd"]) == ""
    assert json.dumps(common_prefix(["a\n", "a\n"])) == '"a\\n"'
