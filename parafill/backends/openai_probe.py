"""What an OpenAI-compatible server is, asked once with `GET /v1/models` (cheap, and behind the
same API key as the completions): the model names it serves and its `owned_by`, which names the
server software. From that, the defaults the OpenAI API itself does not say: whether a trailing
assistant message is continued (`prefix_mode`). A probe that fails says so (None); it is never
retried here and never fails a request.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import httpx

from parafill.backends.openai_sse import ConstraintMode

Continuation = Literal["drop", "continue"]
# `owned_by` of servers that continue a trailing assistant message when asked with
# continue_final_message=True, add_generation_prompt=False. "llamacpp": llama.cpp's own
# llama-server (tested here; it also continues unasked); "vllm": vLLM >= 0.6.4 (its documented
# request fields; not run here). llama-cpp-python's Python server says "me" and starts a new
# assistant turn after the message whatever the request says, so it gets "drop"; so does any
# server not named here.
CONTINUES: frozenset[str] = frozenset({"llamacpp", "vllm"})


@dataclass(frozen=True)
class ServerInfo:
    owned_by: str | None  # the first model's
    models: tuple[str, ...]


def models_url(base_url: str) -> str:
    """`base_url` may or may not already end in /v1."""
    root = base_url.rstrip("/")
    return f"{root if root.endswith('/v1') else root + '/v1'}/models"


async def probe(
    client: httpx.AsyncClient, base_url: str, headers: Mapping[str, str], timeout: float = 10.0
) -> ServerInfo | None:
    """The server's model list and software; None if it cannot be read (down, 4xx, not JSON)."""
    try:
        response = await client.get(models_url(base_url), headers=headers, timeout=timeout)
        data = response.json().get("data") if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    if not isinstance(data, list):
        return None
    entries = [m for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]
    owner = entries[0].get("owned_by") if entries else None
    return ServerInfo(owner if isinstance(owner, str) else None, tuple(m["id"] for m in entries))


def continuation(infos: Iterable[ServerInfo | None]) -> Continuation | None:
    """ "continue" where every server is known to continue, "drop" where one is not; None
    where a probe failed (undecided: decide again later)."""
    infos = list(infos)
    if any(info is None for info in infos):
        return None
    known = all(info is not None and info.owned_by in CONTINUES for info in infos)
    return "continue" if known else "drop"


def constraint_mode(owned_by: str | None) -> ConstraintMode:
    """How output constraints are written for the server software `owned_by` names: llama.cpp's
    llama-server takes GBNF (regexes are converted), vLLM its `structured_outputs`; any other
    server gets OpenAI's `response_format` only (JSON schemas; other kinds are not sent)."""
    return {"llamacpp": "llama.cpp", "vllm": "vllm"}.get(owned_by or "", "openai")  # type: ignore[return-value]
