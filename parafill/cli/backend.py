"""Which backend a command runs on: the local engine (the default), or with `--server` any
OpenAI-compatible server (llama.cpp's llama-server, vLLM, `parafill serve`, ...), whose model
name is asked from the server when `--server-model` is not given. The planners and the runner
are the same either way; nothing here plans or runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Hashable, Sequence
from contextlib import asynccontextmanager

import httpx

from parafill.api import assumed_costs, with_costs
from parafill.backends.base import Backend
from parafill.backends.local import LocalBackend, LocalConfig
from parafill.backends.openai_http import OpenAIBackend, OpenAIConfig
from parafill.backends.openai_probe import constraint_mode, probe
from parafill.cli.common import EngineRefused, Remote, ServerUnavailable, converting
from parafill.orchestrator.plan import Plan
from parafill.planners.base import Planner


@asynccontextmanager
async def open_backend(
    local: LocalConfig, server: Remote | None, *, logprobs: bool = False
) -> AsyncIterator[Backend]:
    """The local engine opened with `local`, or the `server` (`logprobs`: ask it for each
    token's log-probability, which NER's dedupe uses). EngineRefused: the engine would not
    open with `local` (a draft model with another tokenizer, ...)."""
    if server is None:
        opened = False
        try:
            async with LocalBackend.open(local, on_convert=converting) as engine:
                opened = True
                yield engine
        except ValueError as exc:  # refused while opening (not a failure of the run)
            if opened:
                raise
            raise EngineRefused(str(exc)) from exc
        return
    config = await remote_config(server, logprobs=logprobs)
    async with OpenAIBackend(config) as remote:
        yield remote


async def remote_config(server: Remote, *, logprobs: bool = False) -> OpenAIConfig:
    """The backend config for `server`; its first model unless one is named. Raises
    ServerUnavailable if the server has to be asked and cannot be."""
    model = server.model
    auth = {"Authorization": f"Bearer {server.api_key}"} if server.api_key else {}
    async with httpx.AsyncClient() as client:
        info = await probe(client, server.url, auth)
    if model is None:
        if info is None or not info.models:
            why = "did not answer GET /v1/models" if info is None else "lists no model"
            raise ServerUnavailable(
                f"--server {server.url} {why}: is it running (and is --api-key right)? "
                "--server-model NAME skips the question"
            )
        model = info.models[0]
    mode = constraint_mode(info.owned_by if info else None)
    return OpenAIConfig(
        (server.url,),
        model,
        api_key=server.api_key,
        logprobs=logprobs,
        constraints=mode,
        share_prefix=mode == "llama.cpp",  # llama-server: sibling prompts share their prefix
    )


async def costed(
    planner: Planner,
    target: str | Plan,
    backend: Backend,
    local: LocalConfig,
    announce: Callable[[str], None],
) -> Planner:
    """The router's cost model: measured on the local engine (cached), assumed for a server."""
    if isinstance(backend, LocalBackend):
        return await with_costs(planner, target, backend, local, announce=announce)
    return assumed_costs(planner, backend)


def units(backend: Backend, text: str) -> Sequence[Hashable]:
    """What repetition is counted over: the local model's tokens; a server's words (its
    tokenizer is not here)."""
    if isinstance(backend, LocalBackend):
        return backend.tokenizer.encode(text)  # type: ignore[no-any-return]
    return text.split()
